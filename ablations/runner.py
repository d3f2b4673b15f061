"""Training runs of a control table: one folder per (variant, seed), resumable and crash-safe.

A run folder holds config.json, params.json, history.json, weights/, captions.json,
per_image.csv and metrics.json; it counts as finished only once DONE (or FAILED, for a
diverged run) is written, last, atomically. An unfinished folder is wiped and redone.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from vlm_core.atomic import atomic_write, atomic_write_json
from vlm_core.caption_lm import CaptionCorpus, load_caption_lm_dir
from vlm_core.data import CaptionData, ShapesConfig, load_flickr8k, load_shapes, slot_scores
from vlm_core.errors import UserError
from vlm_core.features import FeatureSet, cached_features
from vlm_core.language import LanguageBackbone, load_language_backbone
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.train import TrainingDiverged, generate_captions, train_model
from vlm_core.vision import VisionBackbone, load_vision_backbone

from . import probes
from .scoring import score_tokenized, tokenize
from .tables import DataSpec, Table, Variant, variant_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DONE, FAILED = "DONE", "FAILED"


def resolve_data_dir(spec: DataSpec, override: str | None) -> Path:
    """--data-dir, then $ABLATE_FLICKR8K, then the table's path (from the cwd, then the repo root)."""
    chosen = override or os.environ.get("ABLATE_FLICKR8K") or spec.path
    p = Path(chosen).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return p


def load_data(spec: DataSpec, data_dir: str | None = None) -> CaptionData:
    if spec.name == "shapes":
        data = load_shapes(ShapesConfig(seed=spec.seed, train=spec.train, dev=spec.dev, test=spec.test))
    else:
        data = load_flickr8k(resolve_data_dir(spec, data_dir))
    if spec.eval_split not in data.splits:
        raise UserError(f"data.eval_split: unknown split {spec.eval_split!r}")
    if spec.train_images:
        data.splits["train"] = data.splits["train"][: spec.train_images]
    if spec.eval_images:
        data.splits[spec.eval_split] = data.splits[spec.eval_split][: spec.eval_images]
    return data


def caption_corpus(data: CaptionData) -> CaptionCorpus:
    """The caption LM's text: training captions, one document per image (for packed pretraining)."""
    return CaptionCorpus(data.name, data.split_captions("train"), data.split_captions("dev"),
                         [len(data.captions[i]) for i in data.splits["train"]])


@dataclass
class Workspace:
    """What every run of a table shares: data, frozen backbones and cached features."""

    table: Table
    data: CaptionData
    vision: VisionBackbone
    lm: LanguageBackbone
    features: dict[str, FeatureSet]
    seconds: dict[str, float]


def prepare(table: Table, cache_dir: Path, data_dir: str | None = None, splits: tuple[str, ...] | None = None,
            log: Callable[[str], None] = print) -> Workspace:
    t0 = time.time()
    data = load_data(table.data, data_dir)
    vision = load_vision_backbone(table.backbones.vision)
    corpus = caption_corpus(data)
    t1 = time.time()
    lm = load_language_backbone(table.backbones.language, cache_dir=cache_dir, caption_corpus=corpus,
                                caption_lm_config=table.caption_lm)
    t2 = time.time()
    if "dev_perplexity" in lm.info:
        log(f"caption LM {lm.name}: dev perplexity {lm.info['dev_perplexity']:.2f} (vocab {lm.info['vocab_size']})")
    wanted = splits or tuple(dict.fromkeys(("train", "dev", table.data.eval_split)))
    feats = {s: cached_features(vision, data, s, cache_dir, log=log) for s in wanted}
    t3 = time.time()
    return Workspace(table, data, vision, lm, feats,
                     {"load": t1 - t0, "language_model": t2 - t1, "features": t3 - t2})


def run_dir(runs_dir: Path, table: Table, variant: str, seed: int) -> Path:
    return Path(runs_dir) / table.name / variant / f"seed-{seed}"


def run_state(path: Path) -> str:
    """'done', 'failed', 'partial' (a killed run: redone) or 'missing'."""
    if (path / DONE).exists():
        return "done"
    if (path / FAILED).exists():
        return "failed"
    return "partial" if path.exists() else "missing"


@contextlib.contextmanager
def table_lock(runs_dir: Path, table: Table):
    """One run-all per output folder: a second one is refused (the OS drops the lock on any exit)."""
    path = Path(runs_dir) / table.name
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        fh.close()
        raise UserError(f"{path}: another 'ablate run-all' is already writing here (lock {path / '.lock'}); "
                        f"wait for it to finish or use another --runs-dir") from err
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def build_model(ws: Workspace, cfg: CaptionModelConfig, seed: int) -> CaptionModel:
    torch.manual_seed(seed)
    return CaptionModel(cfg, ws.lm, ws.vision.feature_dim, ws.vision.grid)


def execute_run(ws: Workspace, variant: Variant, seed: int, out: Path, eval_split: str | None = None,
                on_step: Callable[[int, int, float], None] | None = None,
                log: Callable[[str], None] = print) -> str:
    """Train, caption, score and probe one (variant, seed) into ``out``; returns 'done' or 'failed'."""
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)  # a partial folder from a killed run is never trusted
    out.mkdir(parents=True)
    table, data = ws.table, ws.data
    eval_split = eval_split or table.data.eval_split
    config = variant_config(table, variant)
    config.update(seed=seed, eval_split=eval_split, machine=machine(), lm_info=ws.lm.info,
                  vision_tokens=ws.vision.num_tokens, vision_dim=ws.vision.feature_dim)
    atomic_write_json(out / "config.json", config)
    timings: dict[str, float] = {}

    t = time.time()
    model = build_model(ws, variant.model, seed)
    atomic_write_json(out / "params.json", model.parameter_report())
    history: list[dict] = []
    try:
        train_model(model, data, ws.features["train"], ws.features["dev"], variant.train, seed,
                    on_step=on_step, log=log, history=history)
    except TrainingDiverged as err:
        atomic_write_json(out / "history.json", history)
        atomic_write_json(out / FAILED, {"reason": str(err), "variant": variant.name, "seed": seed})
        log(f"{variant.name} seed {seed}: FAILED: {err}")
        return "failed"
    timings["train"] = time.time() - t
    atomic_write_json(out / "history.json", history)
    model.save_trainable(out / "weights")

    t = time.time()
    feats = ws.features[eval_split]
    captions, first_ids = generate_captions(model, feats, max_new_tokens=variant.train.max_new_tokens,
                                            num_beams=variant.train.num_beams,
                                            no_repeat_ngram_size=variant.train.no_repeat_ngram_size,
                                            batch_size=variant.train.generate_batch_size, with_first_token=True)
    timings["generate"] = time.time() - t
    ids = feats.ids
    atomic_write_json(out / "captions.json", dict(zip(ids, captions)))

    t = time.time()
    refs = {i: data.captions[i] for i in ids}
    gts, res = tokenize(refs, dict(zip(ids, captions)))
    corpus, per_image = score_tokenized(gts, res, spice=table.probes.spice)
    slots = {}
    if data.labels:
        slot_rows = [slot_scores(c, data.labels[i]) for i, c in zip(ids, captions)]
        slot_frame = pd.DataFrame(slot_rows, index=per_image.index).add_prefix("slot_")
        per_image = per_image.join(slot_frame)
        slots = {k: float(v) for k, v in slot_frame.mean().items()}
    timings["score"] = time.time() - t

    t = time.time()
    perm = probes.derangement(len(ids), table.probes.swap_seed)
    tokenized = [res[i][0] for i in ids]
    probe = probes.generation_swap(captions, tokenized, perm)
    probe.update(probes.perceptual_score(gts, res, ids, perm))
    n_refs = table.probes.nll_refs or None
    like = probes.likelihood_swap(model, feats.batch(list(range(len(ids)))), [refs[i][:n_refs] for i in ids], perm)
    per_image["nll_gap"] = like.pop("per_image_nll_gap")
    probe.update(like)
    probe.update(probes.degeneracy(captions, first_ids, model.eos_id))
    timings["probe"] = time.time() - t

    atomic_write(out / "per_image.csv", lambda p: per_image.to_csv(p))
    metrics = {"variant": variant.name, "seed": seed, "split": eval_split, "images": len(ids),
               "metrics": corpus, "slots": slots, "probes": probe, "timings": timings}
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / DONE, {"finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                   "seconds": round(sum(timings.values()), 2)})
    return "done"


def load_run_model(run: Path, cache_dir: Path) -> tuple[CaptionModel, VisionBackbone]:
    """Rebuild a trained model from a run folder (for `ablate caption`)."""
    run = Path(run)
    cfg_path = run / "config.json"
    if not cfg_path.exists() or not (run / "weights" / "model_config.json").exists():
        raise UserError(f"{run}: not a finished run folder (config.json / weights/ missing)")
    config = json.loads(cfg_path.read_text())
    vision = load_vision_backbone(config["backbones"]["vision"])
    lm_dir = config.get("lm_info", {}).get("cache_dir")
    if config["backbones"]["language"] == "caption-gpt2-tiny" and lm_dir and Path(lm_dir).exists():
        lm = load_caption_lm_dir(Path(lm_dir))
    else:
        from vlm_core.caption_lm import CaptionLMConfig

        data = load_data(DataSpec(**config["data"]))
        corpus = caption_corpus(data)
        lm = load_language_backbone(config["backbones"]["language"], cache_dir=cache_dir, caption_corpus=corpus,
                                    caption_lm_config=CaptionLMConfig(**config["caption_lm"]))
    model = CaptionModel(CaptionModelConfig(**config["model"]), lm, vision.feature_dim, vision.grid)
    model.load_trainable(run / "weights")
    model.eval()
    return model, vision
