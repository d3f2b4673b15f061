"""Training runs of a control table: prepare what runs share, then each (variant, seed) as named
stages (train, caption, score, probe) written through the run record (record.py).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from vlm_core.caption_lm import CaptionCorpus, CaptionLMConfig, load_caption_lm_dir
from vlm_core.data import CaptionData
from vlm_core.device import describe, resolve_device
from vlm_core.errors import UserError
from vlm_core.features import FeatureSet, cached_features
from vlm_core.flickr8k import load_flickr8k
from vlm_core.language import LanguageBackbone, load_language_backbone
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.shapes import ShapesConfig, load_shapes
from vlm_core.train import Decoding, TrainConfig, TrainingDiverged, generate_captions, train_model
from vlm_core.vision import VisionBackbone, load_vision_backbone

from . import attention, probes
from .record import REPO_ROOT, RunRecord, config_hash, determinism, provenance, run_path
from .scoring import score_tokenized, tokenize
from .slots import slot_scores
from .tables import DataSpec, Table, Variant, variant_config

GALLERY_MAPS = 2  # eval images whose Q-Former attention maps every run keeps


def resolve_data_dir(spec: DataSpec, override: str | None) -> Path:
    """--data-dir, then $ABLATE_FLICKR8K, then the table's path (from the cwd, then the repo root)."""
    chosen = override or os.environ.get("ABLATE_FLICKR8K") or spec.path
    p = Path(chosen).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return p


def load_data(spec: DataSpec, data_dir: str | None = None) -> CaptionData:
    if spec.name == "shapes":
        data = load_shapes(spec.shapes)
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
    """What every run of a table shares: data, frozen backbones, cached features, provenance."""

    table: Table
    data: CaptionData
    vision: VisionBackbone
    lm: LanguageBackbone
    features: dict[str, FeatureSet]
    seconds: dict[str, float]
    provenance: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")


def prepare(table: Table, cache_dir: Path, data_dir: str | None = None, splits: tuple[str, ...] | None = None,
            log: Callable[[str], None] = print) -> Workspace:
    """Data, frozen backbones (on the table's run.device) and cached features for every run of a table."""
    t0 = time.time()
    device = resolve_device(table.run.device)
    data = load_data(table.data, data_dir)
    if data.problems:
        log(f"note: {data.problems[0]}" + (f" (and {len(data.problems) - 1} more like it)" if len(data.problems) > 1 else ""))
    vision = load_vision_backbone(table.backbones.vision).to(device)
    t1 = time.time()
    lm = load_language_backbone(table.backbones.language, cache_dir=cache_dir, caption_corpus=caption_corpus(data),
                                caption_lm_config=table.caption_lm)
    t2 = time.time()
    if "dev_perplexity" in lm.info:
        log(f"caption LM {lm.name}: dev perplexity {lm.info['dev_perplexity']:.2f} (vocab {lm.info['vocab_size']})")
    wanted = splits or tuple(dict.fromkeys(("train", "dev", table.data.eval_split)))
    feats = {s: cached_features(vision, data, s, cache_dir, log=log) for s in wanted}
    t3 = time.time()
    return Workspace(table, data, vision, lm, feats, {"load": t1 - t0, "language_model": t2 - t1, "features": t3 - t2},
                     provenance(describe(device), table.run.precision), device)


def run_config(table: Table, variant: Variant, seed: int, eval_split: str) -> dict:
    """The settings that determine one run's result; their hash tells a current run from a stale one."""
    return {**variant_config(table, variant), "seed": seed, "eval_split": eval_split}


def expected_hash(table: Table, variant: Variant, seed: int) -> str:
    return config_hash(run_config(table, variant, seed, table.data.eval_split))


def plan_runs(table: Table, runs_dir: Path, variants: list[Variant], seeds: list[int], force: bool = False,
              keep_stale: bool = False) -> tuple[list[tuple[Variant, int]], list[str]]:
    """Which (variant, seed) runs to do, and one line for each run left as it is or redone for a reason.

    A finished run is kept only when its stored config hash equals the table's now; a stale one
    (settings changed since, or made before runs recorded their hash) is redone unless ``keep_stale``."""
    todo, notes = [], []
    for v in variants:
        for s in seeds:
            record = RunRecord(run_path(runs_dir, table.name, v.name, s))
            state = record.status(expected_hash(table, v, s))
            if state not in ("done", "failed", "stale") or force:
                todo.append((v, s))
            elif state == "stale":
                if keep_stale:
                    notes.append(f"keep {v.name} seed {s}: STALE (its settings differ from the table's; the report flags it)")
                else:
                    notes.append(f"redo {v.name} seed {s}: stale (its settings differ from the table's now)")
                    todo.append((v, s))
            else:
                notes.append(f"skip {v.name} seed {s}: {state} earlier" + (" (use --force to retry)" if state == "failed" else ""))
    return todo, notes


def build_model(ws: Workspace, cfg: CaptionModelConfig, seed: int) -> CaptionModel:
    torch.manual_seed(seed)
    model = CaptionModel(cfg, ws.lm, ws.vision.feature_dim, ws.vision.grid).to(ws.device)
    model.precision = ws.table.run.precision
    return model


class Stopwatch:
    """Seconds per named stage: ``with watch("train"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.time()
        try:
            yield
        finally:
            self.seconds[stage] = time.time() - start


def execute_run(ws: Workspace, variant: Variant, seed: int, out: Path, eval_split: str | None = None,
                on_step: Callable[[int, int, float], None] | None = None,
                log: Callable[[str], None] = print) -> str:
    """Train, caption, score and probe one (variant, seed) into ``out``; returns 'done' or 'failed'."""
    record = RunRecord(out)
    eval_split = eval_split or ws.table.data.eval_split
    record.begin(run_config(ws.table, variant, seed, eval_split),
                 {"provenance": {**ws.provenance, "determinism": determinism()},
                  "machine": ws.provenance.get("machine", ""), "lm_info": ws.lm.info,
                  "vision_tokens": ws.vision.num_tokens, "vision_dim": ws.vision.feature_dim})
    watch, label = Stopwatch(), f"{variant.name} seed {seed}"
    try:
        with watch("train"):
            model = train_stage(ws, variant, seed, record, on_step, lambda m: log(f"{label}: {m}"))
    except TrainingDiverged as err:
        record.fail(str(err), err.history, variant.name, seed, watch.seconds["train"])
        log(f"{label}: FAILED: {err}")
        return "failed"
    feats = ws.features[eval_split]
    with watch("generate"):
        captions, first_ids = generate_captions(model, feats, variant.train.decoding(), with_first_token=True)
    record.write_captions(dict(zip(feats.ids, captions)))
    with watch("score"):
        corpus, slots, per_image, gts, res = score_stage(ws.data, feats.ids, captions, ws.table.probes.spice)
    with watch("probe"):
        probe = probe_stage(ws, model, feats, captions, first_ids, gts, res, per_image)
    shown = list(range(min(GALLERY_MAPS, len(feats.ids))))
    maps = model.query_attention(feats.batch(shown))  # kept for the report's attention gallery: no model needed there
    if maps is not None:
        record.write_attention_maps({feats.ids[k]: maps[:, k] for k in shown})
    # facts of the data set the report needs, kept so that it can be written without the data on disk
    per_image["ref_words"] = [float(np.mean([len(c.split()) for c in ws.data.captions[i]])) for i in feats.ids]
    record.finish(per_image, {"variant": variant.name, "seed": seed, "split": eval_split, "images": len(feats.ids),
                              "train_images": len(ws.data.splits["train"]), "metrics": corpus, "slots": slots,
                              "probes": probe, "timings": watch.seconds})
    return "done"


def train_stage(ws: Workspace, variant: Variant, seed: int, record: RunRecord,
                on_step: Callable | None, log: Callable[[str], None]) -> CaptionModel:
    """Build and train the model; history and trained weights go into the record."""
    model = build_model(ws, variant.model, seed)
    record.write_params(model.parameter_report())
    history: list[dict] = []
    try:
        # kept so that self-critical training can be compared with, or re-screened from, the same model
        train_model(model, ws.data, ws.features["train"], ws.features["dev"], variant.train, seed,
                    on_step=on_step, log=log, history=history,
                    before_self_critical=lambda m: m.save_trainable(record.xe_weights_dir))
    except TrainingDiverged as err:
        err.history = history
        raise
    record.write_history(history)
    model.save_trainable(record.weights_dir)
    return model


def score_stage(data: CaptionData, ids: list[str], captions: list[str], spice: bool):
    """Corpus metrics, slot accuracy (shapes), a per-image frame, and the tokenized captions."""
    refs = {i: data.captions[i] for i in ids}
    gts, res = tokenize(refs, dict(zip(ids, captions)))
    corpus, per_image = score_tokenized(gts, res, spice=spice)
    slots = {}
    if data.labels:
        slot_frame = pd.DataFrame([slot_scores(c, data.labels[i]) for i, c in zip(ids, captions)],
                                  index=per_image.index).add_prefix("slot_")
        per_image = per_image.join(slot_frame)
        slots = {k: float(v) for k, v in slot_frame.mean().items()}
    return corpus, slots, per_image, gts, res


def probe_stage(ws: Workspace, model: CaptionModel, feats: FeatureSet, captions: list[str], first_ids: list[int],
                gts: dict, res: dict, per_image: pd.DataFrame) -> dict:
    """Image-swap probes, degeneracy and measured EOS probabilities; per-image NLL gaps join ``per_image``."""
    ids, table = feats.ids, ws.table
    perm = probes.derangement(len(ids), table.probes.swap_seed)
    probe = probes.generation_swap(captions, [res[i][0] for i in ids], perm)
    probe.update(probes.perceptual_score(gts, res, ids, perm))
    refs = [ws.data.captions[i][: table.probes.nll_refs or None] for i in ids]
    x = feats.batch(list(range(len(ids))))
    like = probes.likelihood_swap(model, x, refs, perm)
    per_image["nll_gap"] = like.pop("per_image_nll_gap")
    probe.update(like)
    probe.update(probes.degeneracy(captions, first_ids, model.eos_id))
    probe.update(probes.eos_probabilities(model, x, [r[0] for r in refs]))
    per_image["visual_reliance"], scalars = attention.visual_reliance(model, x, captions)
    probe.update(scalars)
    if ws.data.labels and not model.cfg.blind:  # where the objects are is known: is the Q-Former looking there?
        found = attention.grounding(model, x, [ws.data.labels[i] for i in ids], ws.vision.grid)
        if found is not None:
            for column, values in found[0].items():
                per_image[column] = values.to_numpy()
            probe.update(found[1])
    return probe


def load_run_model(run: Path, cache_dir: Path, device: str = "auto", data_dir: str | None = None,
                   weights: str = "final") -> tuple[CaptionModel, VisionBackbone]:
    """Rebuild a finished run's trained model (for `ablate caption`, `ablate attention`), on ``device``;
    ``weights = "xe"``: its cross-entropy model from before the self-critical epochs."""
    record = RunRecord(run)
    config = record.config()
    if record.state() != "done" or not (record.weights_dir / "model_config.json").exists():
        raise UserError(f"{run}: not a finished run folder (no DONE marker or no weights/)")
    if weights not in ("final", "xe"):
        raise UserError(f"weights must be 'final' or 'xe', not {weights!r}")
    weights_dir = record.weights_dir if weights == "final" else record.xe_weights_dir
    if not (weights_dir / "model_config.json").exists():
        raise UserError(f"{run}: no {weights_dir.name}/ (only runs with self-critical epochs, made after "
                        "they were kept, have the cross-entropy model)")
    target = resolve_device(device)
    vision = load_vision_backbone(config["backbones"]["vision"]).to(target)
    language, lm_dir = config["backbones"]["language"], config.get("lm_info", {}).get("cache_dir")
    if language == "caption-gpt2-tiny" and lm_dir and Path(lm_dir).exists():
        lm = load_caption_lm_dir(Path(lm_dir))
    elif language == "caption-gpt2-tiny":  # rebuilt (or found in cache_dir) from the run's training captions
        data = run_data(config, data_dir)
        lm = load_language_backbone(language, cache_dir=cache_dir, caption_corpus=caption_corpus(data),
                                    caption_lm_config=CaptionLMConfig(**config["caption_lm"]))
    else:
        lm = load_language_backbone(language, cache_dir=cache_dir)
    model = CaptionModel(CaptionModelConfig(**config["model"]), lm, vision.feature_dim, vision.grid).to(target)
    model.precision = config.get("precision", "fp32")
    model.load_trainable(weights_dir)
    model.eval()
    return model, vision


def run_data(config: dict, data_dir: str | None = None, split: str | None = None, images: int = 0) -> CaptionData:
    """The data a stored run was made with (its config's data section, eval split cut as it was); with ``split``,
    that split is the one cut instead: its first ``images`` (0: as the run cut it if it is the run's split, else all).
    The model trained on the training split only, so a test run can be screened on dev."""
    spec = dict(config["data"])
    if split:
        spec["eval_images"] = images or (spec.get("eval_images", 0) if split == config["eval_split"] else 0)
        spec["eval_split"] = split
    return load_data(DataSpec(**{**spec, "shapes": ShapesConfig(**spec["shapes"])}), data_dir)


def run_decoding(run: Path) -> Decoding:
    """The decoding settings a run was scored with (what `ablate caption` uses by default)."""
    return TrainConfig(**RunRecord(run).config()["train"]).decoding()
