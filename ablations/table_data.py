"""The data a table's runs use: its data set (Flickr8k from disk, or the generated shapes), cut to the
table's splits, and the caption LM's text; also the data a stored run was made with."""
from __future__ import annotations

import os
from pathlib import Path

from vlm_core.caption_lm import CaptionCorpus
from vlm_core.data import CaptionData
from vlm_core.errors import UserError
from vlm_core.flickr8k import load_flickr8k
from vlm_core.shapes import ShapesConfig, load_shapes

from .record import REPO_ROOT
from .tables import DataSpec


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


def run_data(config: dict, data_dir: str | None = None, split: str | None = None, images: int = 0) -> CaptionData:
    """The data a stored run was made with (its config's data section, eval split cut as it was); with ``split``,
    that split is the one cut instead: its first ``images`` (0: as the run cut it if it is the run's split, else all).
    The model trained on the training split only, so a test run can be screened on dev."""
    spec = dict(config["data"])
    if split:
        spec["eval_images"] = images or (spec.get("eval_images", 0) if split == config["eval_split"] else 0)
        spec["eval_split"] = split
    return load_data(DataSpec(**{**spec, "shapes": ShapesConfig(**spec["shapes"])}), data_dir)


