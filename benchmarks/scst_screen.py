"""Screen self-critical training on a finished dev run without redoing its cross-entropy epochs: fine-tunes
the run's model with ``self_critical`` and, after each self-critical epoch, captions the run's eval split with
the run's own decoding and prints BLEU-4, METEOR, ROUGE-L, CIDEr, mean words and the share of distinct captions.

    python benchmarks/scst_screen.py runs/train/flickr8k-full-seed0 --epochs 3 --lr 1e-4 --samples 5

The same phase a table run with ``train.scst_epochs`` performs after its cross-entropy epochs (same code),
started here from fresh random generators, so a run's numbers match these in expectation, not bit for bit.
The screen always scores the dev split (the first --images of it). A table run with self-critical epochs
(scored on test) can be screened from the cross-entropy model it kept (`weights-xe/`): that model was
trained on the training split only, so scoring it on dev chooses on dev.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import typer

from ablations.run.record import CACHE_DIR, RunRecord
from ablations.table_data import run_data
from ablations.run.trained import load_run_model, run_decoding
from ablations.measure.scoring import score_captions
from vlm_core.errors import UserError
from vlm_core.features import cached_features
from vlm_core.decoding import generate_captions
from vlm_core.train import TrainConfig, self_critical


def main(run: Path, epochs: int = typer.Option(2), lr: float = typer.Option(1e-4), samples: int = typer.Option(5),
         baseline: str = typer.Option("others", help="others | greedy"),
         candidates: str = typer.Option("sample", help="sample | beam"),
         images: int = typer.Option(0, help="score only the first N dev images (0: as the run, all of dev for a test run)"),
         cache_dir: Path = typer.Option(CACHE_DIR)):
    config = RunRecord(run).config()
    # a run with self-critical epochs starts the screen from the cross-entropy model it kept
    weights = "xe" if config["train"].get("scst_epochs", 0) else "final"
    try:
        cfg = replace(TrainConfig(**config["train"]), scst_epochs=epochs, scst_lr=lr, scst_samples=samples,
                      scst_baseline=baseline, scst_candidates=candidates)
        model, vision = load_run_model(run, cache_dir, weights=weights)
    except UserError as err:
        sys.exit(str(err))
    data = run_data(config, split="dev", images=images)
    quiet = lambda *_: None
    feats = {s: cached_features(vision, data, s, cache_dir, log=quiet) for s in ("train", "dev")}
    decoding, refs = run_decoding(run), {i: data.captions[i] for i in feats["dev"].ids}
    print(f"{run} ({weights} weights): self-critical {epochs} epochs, lr {lr}, {samples} {candidates} candidates an image, baseline {baseline}; "
          f"scored on {len(feats['dev'].ids)} dev images with {decoding}")
    print("| self-critical epochs | BLEU-4 | METEOR | ROUGE-L | CIDEr | mean words | distinct | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    start = time.time()

    def score(epoch: int) -> None:
        captions = generate_captions(model, feats["dev"], decoding)
        m, _ = score_captions(refs, dict(zip(feats["dev"].ids, captions)))
        words = sum(len(c.split()) for c in captions) / len(captions)
        print(f"| {epoch} | {m['BLEU-4']:.3f} | {m['METEOR']:.3f} | {m['ROUGE-L']:.3f} | {m['CIDEr']:.3f} | "
              f"{words:.1f} | {len(set(captions)) / len(captions):.0%} | {time.time() - start:.0f} |", flush=True)

    score(0)
    torch.manual_seed(config["seed"])
    self_critical(model, data, feats["train"], feats["dev"], cfg, random.Random(config["seed"]),
                  log=lambda m: print(f"  {m}", flush=True), after_epoch=score)


if __name__ == "__main__":
    typer.run(main)
