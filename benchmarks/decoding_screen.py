"""Screen decoding settings on a finished dev run without retraining: captions its eval split with each
setting and prints BLEU-4, METEOR, ROUGE-L, CIDEr, mean words and the share of distinct captions.

    python benchmarks/decoding_screen.py runs/train/flickr8k-full-seed0 \
        --setting beams=3 --setting beams=10 --setting beams=10,rerank=consensus,length_penalty=1.2

A setting is comma-separated KEY=VALUE over the run's own decoding (keys: beams, no_repeat,
length_penalty, rerank, samples, temperature, max_new_tokens). The run's eval split is scored unless --split
says otherwise (a table run scored on test can be screened on dev: `--split dev --images 500`); the test split
is refused unless --allow-test: settings are chosen on dev.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import typer

from ablations.run.record import CACHE_DIR, RunRecord
from ablations.table_data import run_data
from ablations.run.trained import load_run_model, run_decoding
from ablations.measure.scoring import score_captions
from vlm_core.errors import UserError
from vlm_core.features import cached_features
from vlm_core.decoding import generate_captions

KEYS = {"beams": ("num_beams", int), "no_repeat": ("no_repeat_ngram_size", int),
        "length_penalty": ("length_penalty", float), "rerank": ("rerank", str), "max_new_tokens": ("max_new_tokens", int),
        "samples": ("rerank_samples", int), "temperature": ("rerank_temperature", float)}


def parse(setting: str) -> dict:
    out = {}
    for part in filter(None, setting.split(",")):
        key, _, value = part.partition("=")
        if key not in KEYS:
            raise typer.BadParameter(f"{setting!r}: unknown key {key!r} (one of {', '.join(KEYS)})")
        name, kind = KEYS[key]
        out[name] = kind(value)
    return out


def main(run: Path, setting: list[str] = typer.Option([], "--setting"), cache_dir: Path = typer.Option(CACHE_DIR),
         split: str = typer.Option("", "--split", help="dev or test; default: the split the run was scored on"),
         images: int = typer.Option(0, "--images", help="score only the first N images of the split (0: as the run)"),
         weights: str = typer.Option("final", "--weights", help="final | xe (before the self-critical epochs)"),
         allow_test: bool = typer.Option(False, "--allow-test")):
    config = RunRecord(run).config()
    split = split or config["eval_split"]
    if split != "dev" and not allow_test:
        sys.exit(f"{run}: {split!r} split; decoding is chosen on dev (--split dev, or --allow-test to override)")
    try:
        model, vision = load_run_model(run, cache_dir, weights=weights)
    except UserError as err:
        sys.exit(str(err))
    data = run_data(config, split=split, images=images)
    feats = cached_features(vision, data, split, cache_dir, log=lambda *_: None)
    refs = {i: data.captions[i] for i in feats.ids}
    base = run_decoding(run)
    print(f"{run} ({weights} weights): {len(feats.ids)} {split} images; the run's decoding: {base}")
    print("| setting | BLEU-4 | METEOR | ROUGE-L | CIDEr | mean words | distinct | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for s in setting or [""]:
        decoding = replace(base, **parse(s))
        start = time.time()
        captions = generate_captions(model, feats, decoding)
        seconds = time.time() - start
        m, _ = score_captions(refs, dict(zip(feats.ids, captions)))
        words = sum(len(c.split()) for c in captions) / len(captions)
        print(f"| {s or 'the run'} | {m['BLEU-4']:.3f} | {m['METEOR']:.3f} | {m['ROUGE-L']:.3f} | {m['CIDEr']:.3f} | "
              f"{words:.1f} | {len(set(captions)) / len(captions):.0%} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    typer.run(main)
