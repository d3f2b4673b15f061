"""Training runs of a control table: prepare what runs share, then each (variant, seed) as named
stages (train, caption, score, probe) written through the run record (record.py).

The score stage reads text only (captions and references). Its metrics that need Java (pycocoevalcap's PTB
tokenizer, METEOR, SPICE) and the swap probes that read tokenized text can be left 'to score' (run.score): the
run records its captions, ``to_score`` and where each stage ran (``ran_on``), and `ablate score`
(deferred_scoring.py) finishes it later with the same score_stage where Java is.
"""
from __future__ import annotations

import contextlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from vlm_core.data import CaptionData
from vlm_core.device import check_supported, configure, describe, resolve_device
from vlm_core.features import FeatureSet, cached_features
from vlm_core.caption_lm import load_language_backbone
from vlm_core.language import LanguageBackbone
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.decoding import generate_captions
from vlm_core.train import TrainingDiverged, train_model
from vlm_core.vision import VisionBackbone, load_vision_backbone

from ablations.measure import attention

from ablations.measure import probes
from ablations.run.planning import run_config
from ablations.run.provenance import determinism, provenance
from ablations.run.record import STAGES, RunRecord
from ablations.measure.scoring import CAPTION_METRICS, METRIC_COLUMNS, Captions, check_installed, chosen_metrics, score
from ablations.measure.slots import slot_scores
from ablations.table_data import caption_corpus, load_data
from ablations.tables import Table, Variant

TRAIN, GENERATE, SCORE, PROBE = STAGES
CROSS_ENTROPY_MODEL = "score_cross_entropy_model"  # self-critical runs: their model before those epochs, scored
GALLERY_MAPS = 2  # eval images whose Q-Former attention maps every run keeps


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
    check_installed(table.probes.opt_in_metrics)
    device = resolve_device(table.run.device)
    check_supported(device, table.run.precision)
    configure(device, table.run.precision)
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


def build_model(workspace: Workspace, cfg: CaptionModelConfig, seed: int) -> CaptionModel:
    configure(workspace.device, workspace.table.run.precision)  # again: a pool or Ray worker is a new process
    torch.manual_seed(seed)
    model = CaptionModel(cfg, workspace.lm, workspace.vision.feature_dim, workspace.vision.grid).to(workspace.device)
    model.precision = workspace.table.run.precision
    return model


class Stopwatch:
    """Seconds per named stage, summed: ``with watch(TRAIN): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.time()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.time() - start  # a stage may come twice


def execute_run(workspace: Workspace, variant: Variant, seed: int, out: Path, eval_split: str | None = None,
                on_step: Callable[[int, int, float], None] | None = None,
                log: Callable[[str], None] = print) -> str:
    """Train, caption, score and probe one (variant, seed) into ``out``; returns 'done' or 'failed'."""
    record = RunRecord(out)
    eval_split = eval_split or workspace.table.data.eval_split
    configure(workspace.device, workspace.table.run.precision)  # before determinism() records it (a Ray worker is new)
    record.begin(run_config(workspace.table, variant, seed, eval_split),
                 {"provenance": {**workspace.provenance, "determinism": determinism(),
                                 "hub_revisions": {"vision": workspace.vision.revision,
                                                   "language": workspace.lm.info.get("hub_revision")}},
                  "machine": workspace.provenance.get("machine", ""), "lm_info": workspace.lm.info,
                  "vision_tokens": workspace.vision.num_tokens, "vision_dim": workspace.vision.feature_dim})
    try:
        return _execute(workspace, variant, seed, record, eval_split, on_step, log)
    finally:
        record.release()  # published (or stopped by an error): the cell's lock goes either way


def _execute(workspace: Workspace, variant: Variant, seed: int, record: RunRecord, eval_split: str,
             on_step: Callable[[int, int, float], None] | None, log: Callable[[str], None]) -> str:
    watch, label, here = Stopwatch(), f"{variant.name} seed {seed}", platform.node()
    try:
        with watch(TRAIN):
            model = train_stage(workspace, variant, seed, record, on_step, lambda m: log(f"{label}: {m}"))
    except TrainingDiverged as err:
        record.fail(str(err), err.history, variant.name, seed, watch.seconds[TRAIN])
        log(f"{label}: FAILED: {err}")
        return "failed"
    feats, table = workspace.features[eval_split], workspace.table
    with watch(GENERATE):
        captions, first_ids = generate_captions(model, feats, variant.train.decoding(), with_first_token=True)
    record.write_captions(dict(zip(feats.ids, captions)))
    slots, per_image = slot_stage(workspace.data, feats.ids, captions)
    with watch(PROBE):
        probe = probe_stage(workspace, model, feats, captions, first_ids, per_image)
    shown = list(range(min(GALLERY_MAPS, len(feats.ids))))
    maps = model.query_attention(feats.batch(shown))  # kept for the report's attention gallery: no model needed there
    if maps is not None:
        record.write_attention_maps({feats.ids[k]: maps[:, k] for k in shown})
    # facts of the data set the report needs, kept so that it can be written without the data on disk
    per_image["ref_words"] = [float(np.mean([len(c.split()) for c in workspace.data.captions[i]])) for i in feats.ids]
    summary = {"variant": variant.name, "seed": seed, "split": eval_split, "images": len(feats.ids),
               "train_images": len(workspace.data.splits["train"]), "metrics": {}, "slots": slots, "probes": probe}
    captions_xe = None
    if variant.train.scst_epochs:
        with watch(CROSS_ENTROPY_MODEL):  # not one of STAGES: the time-per-stage table stays comparable
            captions_xe = dict(zip(feats.ids, cross_entropy_captions(model, variant, record, feats)))
    chosen = chosen_metrics(table.probes.opt_in_metrics)
    later = table.run.score == "later"
    names = [n for n in chosen if not CAPTION_METRICS[n].java] if later else chosen
    with watch(SCORE):  # later: only what needs no Java (the PTB tokenizer, METEOR, SPICE) is scored here
        scored = score_stage({i: workspace.data.captions[i] for i in feats.ids}, dict(zip(feats.ids, captions)),
                             names, table.probes.swap_seed, None if later else captions_xe, swap_probes=not later)
    summary, per_image = with_scores(summary, per_image, scored)
    ran_on = {stage: None if later and stage == SCORE else here for stage in STAGES}
    waits = {"to_score": to_score([n for n in chosen if n not in names], captions_xe)} if later else {}
    record.finish(per_image, {**summary, "timings": watch.seconds, "ran_on": ran_on, **waits})
    return "done"


def cross_entropy_captions(model: CaptionModel, variant: Variant, record: RunRecord, feats: FeatureSet) -> list[str]:
    """The run's model from before its self-critical epochs, captioned like the final one (and scored with it),
    so the report shows per run what those epochs added. Last, because it loads those weights into ``model``."""
    model.load_trainable(record.xe_weights_dir)
    return generate_captions(model, feats, variant.train.decoding())


def train_stage(workspace: Workspace, variant: Variant, seed: int, record: RunRecord,
                on_step: Callable | None, log: Callable[[str], None]) -> CaptionModel:
    """Build and train the model; history and trained weights go into the record."""
    model = build_model(workspace, variant.model, seed)
    record.write_params(model.parameter_report())
    history: list[dict] = []
    try:
        # kept so that self-critical training can be compared with, or re-screened from, the same model
        train_model(model, workspace.data, workspace.features["train"], workspace.features["dev"], variant.train, seed,
                    on_step=on_step, log=log, history=history,
                    before_self_critical=lambda m: m.save_trainable(record.xe_weights_dir))
    except TrainingDiverged as err:
        err.history = history
        raise
    record.write_history(history)
    model.save_trainable(record.weights_dir)
    return model


@dataclass
class Scored:
    """What the score stage adds to a run: corpus metrics, their per-image values (index = image id), the swap
    probes that read PTB-tokenized captions, and the cross-entropy model's metrics (self-critical runs)."""

    metrics: dict[str, float]
    per_image: pd.DataFrame
    probes: dict = field(default_factory=dict)
    metrics_xe: dict | None = None


def score_stage(refs: dict[str, list[str]], captions: dict[str, str], names: list[str], swap_seed: int,
                captions_xe: dict[str, str] | None = None, swap_probes: bool = True) -> Scored:
    """The metrics ``names`` of ``captions`` (image id -> caption) against ``refs``, with the generation-swap and
    perceptual-score probes (``swap_probes``) and the cross-entropy model's default metrics (``captions_xe``).
    Text only, no model: the same function scores a run in place and a run recorded 'to score' later."""
    ids = list(captions)
    text = Captions({i: refs[i] for i in ids}, captions)
    corpus, per_image = score(text, names)
    found = {}
    if swap_probes:
        gts, res = text.tokenized().gts, text.res
        perm = probes.derangement(len(ids), swap_seed)
        found = probes.generation_swap([captions[i] for i in ids], [res[i][0] for i in ids], perm)
        found.update(probes.perceptual_score(gts, res, ids, perm))
    xe = None
    if captions_xe is not None:
        xe = score(Captions({i: refs[i] for i in ids}, {i: captions_xe[i] for i in ids}), chosen_metrics(()))[0]
    return Scored(corpus, per_image, found, xe)


SWAP_PROBES = ("swap_rate", "swap_mutual_bleu4", "cider_swapped", "perceptual_score")  # score_stage's probes
SUMMARY_ORDER = ("variant", "seed", "split", "images", "train_images", "metrics", "slots", "probes", "metrics_xe",
                 "timings", "ran_on", "to_score")  # metrics.json's keys, in the order a run scored in place has them


def with_scores(summary: dict, per_image: pd.DataFrame, scored: Scored) -> tuple[dict, pd.DataFrame]:
    """``summary`` (metrics.json) and ``per_image`` with ``scored`` added, in the order of a run scored in place
    (metrics in registry order, their per-image columns first, the swap probes before the model's)."""
    values = {**summary["metrics"], **scored.metrics}
    metrics = {c: values[c] for c in METRIC_COLUMNS if c in values}
    frame = scored.per_image.join(per_image.drop(columns=[c for c in scored.per_image if c in per_image]))
    frame = frame[[c for c in metrics if c in frame] + [c for c in frame if c not in metrics]]
    merged = {**summary, "metrics": metrics, "probes": {**scored.probes, **summary["probes"]}}
    if scored.metrics_xe is not None:
        merged["metrics_xe"] = scored.metrics_xe
    ordered = {k: merged[k] for k in SUMMARY_ORDER if k in merged}
    return {**ordered, **{k: v for k, v in merged.items() if k not in ordered}}, frame


def to_score(names: list[str], captions_xe: dict[str, str] | None) -> dict:
    """metrics.json's "to_score": what a run left for a machine with Java, and the text it needs beyond its record."""
    out = {"metrics": names, "probes": list(SWAP_PROBES)}
    if captions_xe is not None:
        out["captions_xe"] = captions_xe
    return out


def slot_stage(data: CaptionData, ids: list[str], captions: list[str]) -> tuple[dict, pd.DataFrame]:
    """Slot accuracy (shapes: the generator's labels; no Java, no model) and the per-image frame the later
    stages add columns to."""
    frame = pd.DataFrame(index=pd.Index(ids, name="image"))
    if not data.labels:
        return {}, frame
    slot_frame = pd.DataFrame([slot_scores(c, data.labels[i]) for i, c in zip(ids, captions)],
                              index=frame.index).add_prefix("slot_")
    return {k: float(v) for k, v in slot_frame.mean().items()}, frame.join(slot_frame)


def probe_stage(workspace: Workspace, model: CaptionModel, feats: FeatureSet, captions: list[str], first_ids: list[int],
                per_image: pd.DataFrame) -> dict:
    """The probes that need the model: likelihood swap, degeneracy, measured EOS probabilities, visual reliance and
    grounding; per-image NLL gaps and the like join ``per_image``. (The swap probes that read tokenized text are
    the score stage's.)"""
    ids, table = feats.ids, workspace.table
    perm = probes.derangement(len(ids), table.probes.swap_seed)
    refs = [workspace.data.captions[i][: table.probes.nll_refs or None] for i in ids]
    x = feats.batch(list(range(len(ids))))
    probe = probes.likelihood_swap(model, x, refs, perm)
    per_image["nll_gap"] = probe.pop("per_image_nll_gap")
    probe.update(probes.degeneracy(captions, first_ids, model.eos_id))
    probe.update(probes.eos_probabilities(model, x, [r[0] for r in refs]))
    per_image["visual_reliance"], scalars = attention.visual_reliance(model, x, captions)
    probe.update(scalars)
    if workspace.data.labels and not model.cfg.blind:  # where the objects are is known: is the Q-Former looking there?
        found = attention.grounding(model, x, [workspace.data.labels[i] for i in ids], workspace.vision.grid)
        if found is not None:
            for column, values in found[0].items():
                per_image[column] = values.to_numpy()
            probe.update(found[1])
    return probe
