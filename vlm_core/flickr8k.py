"""Flickr8k from its original layout (or Kaggle's captions.txt), read in place.

Every problem in a data file is a UserError naming the file and line. The one known quirk of
Flickr8k.token.txt (captions for the non-existent ``…jpg.1``) is skipped and listed in
``CaptionData.problems``, which the CLI prints as one note.
"""
from __future__ import annotations

import csv
import io
import random
import re
from pathlib import Path

from .data import SPLITS, CaptionData, normalize_caption, read_lines
from .errors import UserError

TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_FILE = "captions.txt"
SPLIT_FILES = {s: f"Flickr_8k.{s}Images.txt" for s in SPLITS}
IMAGE_DIRS = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")


def load_flickr8k(root: str | Path, images_dir: Path | None = None) -> CaptionData:
    """``images_dir``: the images elsewhere than in the folder's own image folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: Flickr8k data directory not found (set --data-dir or ABLATE_FLICKR8K)")
    if images_dir is None:
        images_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if images_dir is None:
        raise UserError(f"{root}: no image folder (expected one of {', '.join(IMAGE_DIRS)})")
    if not images_dir.is_dir():
        raise UserError(f"{images_dir}: image folder not found")
    present = {p.name for p in images_dir.iterdir()}
    problems: list[str] = []
    where: dict[str, str] = {}
    if (root / TOKEN_FILE).exists():
        captions = _parse_token_file(root / TOKEN_FILE, present, problems, where)
    elif (root / KAGGLE_FILE).exists():
        captions = _parse_kaggle_csv(root / KAGGLE_FILE, present, problems, where)
    else:
        raise UserError(f"{root}: no caption file ({TOKEN_FILE} or {KAGGLE_FILE})")
    splits = {}
    if all((root / f).exists() for f in SPLIT_FILES.values()):
        for split, fname in SPLIT_FILES.items():
            splits[split] = _parse_split_file(root / fname, captions, present)
    else:
        ids = sorted(captions)
        random.Random(0).shuffle(ids)
        n_test = n_dev = min(1000, len(ids) // 8)
        splits = {"test": sorted(ids[:n_test]), "dev": sorted(ids[n_test : n_test + n_dev]),
                  "train": sorted(ids[n_test + n_dev :])}
        problems.append(f"{root}: no official split files; used a seeded random split")
    seen: dict[str, str] = {}
    for split, ids in splits.items():
        for image_id in ids:
            if image_id in seen and seen[image_id] != split:
                raise UserError(f"{root / SPLIT_FILES[split]}: image {image_id} is also in the {seen[image_id]} split")
            seen[image_id] = split
    return CaptionData("flickr8k", captions, splits, images_dir=images_dir, problems=problems, where=where)


def _add_caption(captions, seen_keys, key, image_id, caption, where, present, problems, first=None) -> None:
    """``first``: image id -> the line of its first caption (filled)."""
    if not caption.strip():
        raise UserError(f"{where}: empty caption for {image_id}")
    if key in seen_keys:
        raise UserError(f"{where}: duplicated caption id {key} (first at line {seen_keys[key]})")
    seen_keys[key] = where.rsplit(":", 1)[-1]
    if image_id not in present:
        if re.search(r"\.jpg\.\d+$", image_id):
            problems.append(f"{where}: caption for non-existent image {image_id} (a known Flickr8k quirk), skipped")
            return
        raise UserError(f"{where}: caption for missing image {image_id}")
    captions.setdefault(image_id, []).append(normalize_caption(caption))
    if first is not None:
        first.setdefault(image_id, where)


def _parse_token_file(path: Path, present: set[str], problems: list[str], first=None) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    seen_keys: dict[str, str] = {}
    for n, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        image_id, hash_, idx = key.rpartition("#")
        if not tab or not hash_ or not idx.isdigit() or not image_id:
            raise UserError(f"{path}:{n}: malformed line (expected '<image>#<n><TAB><caption>'): {line[:60]!r}")
        _add_caption(captions, seen_keys, key, image_id, caption, f"{path}:{n}", present, problems, first)
    if not captions:
        raise UserError(f"{path}: no captions")
    return captions


def _parse_kaggle_csv(path: Path, present: set[str], problems: list[str], first=None) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    seen_keys: dict[str, str] = {}
    lines = read_lines(path)
    if not lines or [h.strip() for h in lines[0].split(",")[:2]] != ["image", "caption"]:
        raise UserError(f"{path}:1: expected the header 'image,caption'")
    counts: dict[str, int] = {}
    for n, row in enumerate(csv.reader(io.StringIO("\n".join(lines[1:]))), start=2):
        if not row:
            continue
        if len(row) < 2:
            raise UserError(f"{path}:{n}: malformed line (expected 'image,caption')")
        image_id, caption = row[0].strip(), ",".join(row[1:])
        k = counts[image_id] = counts.get(image_id, -1) + 1
        key = f"{image_id}#{k}:{normalize_caption(caption)}"
        _add_caption(captions, seen_keys, key, image_id, caption, f"{path}:{n}", present, problems, first)
    return captions


def _parse_split_file(path: Path, captions: dict, present: set[str]) -> list[str]:
    ids = []
    for n, line in enumerate(read_lines(path), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if image_id not in present:
            raise UserError(f"{path}:{n}: split names unknown image {image_id} (no such file)")
        if image_id not in captions:
            raise UserError(f"{path}:{n}: split names image {image_id} that has no captions")
        ids.append(image_id)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"{path}: image {dup} is listed twice")
    return ids
