"""The data a table's runs use: its data set (the generated shapes, Flickr8k, or any caption file of a common
format, read in place), cut to the table's splits, and the caption LM's text; also the data a stored run was
made with."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from vlm_core.caption_files import Source, SplitFiles, read_captions
from vlm_core.caption_lm import CaptionCorpus
from vlm_core.data import CaptionData
from vlm_core.errors import UserError
from vlm_core.shapes import ShapesConfig, load_shapes

from ablations.run.provenance import REPO_ROOT
from ablations.tables import DataSpec


def resolve_path(chosen: str) -> Path:
    """A path of a table: from the working directory, then from the repository root."""
    p = Path(chosen).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return p


def resolve_data_dir(spec: DataSpec, override: str | None) -> Path:
    """Flickr8k: --data-dir, then $ABLATE_FLICKR8K, then the table's path; a data file (``format``): its path only."""
    if spec.format:
        return resolve_path(spec.path)
    return resolve_path(override or os.environ.get("ABLATE_FLICKR8K") or spec.path)


def data_source(spec: DataSpec, data_dir: str | None = None) -> Source:
    """Where the data set of ``spec`` is (every path resolved) and how to split it: what a reader takes."""
    if not spec.format:  # Flickr8k by name: read as it always was, under its own name
        return Source(resolve_data_dir(spec, data_dir), name="flickr8k")
    return Source(resolve_path(spec.path), images=resolve_path(spec.images) if spec.images else None,
                  split_files={s: resolve_path(f) for s, f in asdict(spec.splits).items() if f},
                  split_seed=spec.split_seed, dev_share=spec.dev_share, test_share=spec.test_share, label=spec.name)


def load_data(spec: DataSpec, data_dir: str | None = None) -> CaptionData:
    if spec.name == "shapes" and not spec.format:
        data = load_shapes(spec.shapes)
    else:
        data = read_captions(data_source(spec, data_dir), spec.format or "flickr8k")
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


def run_data(config: dict, data_dir: str | None = None, split: str | None = None, images: int = 0) -> CaptionData:
    """The data a stored run was made with (its config's data section, eval split cut as it was); with ``split``,
    that split is the one cut instead: its first ``images`` (0: as the run cut it if it is the run's split, else all).
    The model trained on the training split only, so a test run can be screened on dev."""
    spec = dict(config["data"])
    if split:
        spec["eval_images"] = images or (spec.get("eval_images", 0) if split == config["eval_split"] else 0)
        spec["eval_split"] = split
    parts = {"shapes": ShapesConfig(**spec["shapes"]), "splits": SplitFiles(**spec.get("splits", {}))}
    return load_data(DataSpec(**{**spec, **parts}), data_dir)


