"""Frozen-encoder features, computed once per (encoder, data set, split, image list) and memory-mapped.

Stored as fp16 ``.npy`` (49 x 1280 x 2 bytes = 122.5 KiB an image for EfficientNet-Lite0: about
0.95 GiB for all 8,091 Flickr8k images). A file appears under its final name only when complete,
so a killed build is simply rebuilt.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch

from .atomic import atomic_write_json, partial_owner, remove_dead_partials
from .data import CaptionData
from .vision import VisionBackbone


@dataclass
class FeatureSet:
    ids: list[str]
    array: np.ndarray  # [n, N, D] float16, memory-mapped
    path: Path
    cache_hit: bool
    seconds: float
    _in_ram: torch.Tensor | None = field(default=None, repr=False)

    def in_ram(self) -> torch.Tensor:
        """All rows as one fp16 tensor, read from disk once and shared by every run of a table."""
        if self._in_ram is None:
            self._in_ram = torch.from_numpy(np.array(self.array))
        return self._in_ram

    def batch(self, rows) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array[rows])).float()


def feature_path(cache_dir: Path, backbone: VisionBackbone, data: CaptionData, split: str) -> Path:
    safe = quote(backbone.name, safe="-_.")  # 'org/m' -> 'org%2Fm': never the same file as 'org_m'
    return Path(cache_dir) / "features" / f"{safe}__{data.name}__{split}__{data.split_fingerprint(split)}.npy"


def _cache_with_prefix(path: Path, ids: list[str]) -> Path | None:
    """A finished cache of the same encoder, data set and split whose image list starts with ``ids``."""
    prefix = path.name.rsplit("__", 1)[0] + "__"
    for meta_path in sorted(path.parent.glob(prefix + "*.json")):
        npy = meta_path.with_suffix(".npy")
        if npy == path or not npy.exists():
            continue
        try:
            cached_ids = json.loads(meta_path.read_text()).get("ids", [])
        except (OSError, ValueError):
            continue
        if len(cached_ids) > len(ids) and cached_ids[: len(ids)] == ids:
            return npy
    return None


def cached_features(backbone: VisionBackbone, data: CaptionData, split: str, cache_dir: Path,
                    batch_size: int = 32, log=print) -> FeatureSet:
    path = feature_path(cache_dir, backbone, data, split)
    meta_path = path.with_suffix(".json")
    ids = list(data.splits[split])
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("ids") == ids:
            arr = np.load(path, mmap_mode="r")
            log(f"feature cache hit: {path.name} ({len(ids)} images)")
            return FeatureSet(ids, arr, path, True, 0.0)
    larger = _cache_with_prefix(path, ids)
    if larger is not None:  # e.g. data.train_images / eval_images: the first rows of a full-split cache
        arr = np.load(larger, mmap_mode="r")[: len(ids)]
        log(f"feature cache hit: first {len(ids)} images of {larger.name}")
        return FeatureSet(ids, arr, larger, True, 0.0)
    start = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(path)
    tmp = path.with_name(f".{path.name}.{partial_owner()}.partial")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                    shape=(len(ids), backbone.num_tokens, backbone.feature_dim))
    from rich.progress import Progress

    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"encoding {split} images with {backbone.name}", total=len(ids))
            for i in range(0, len(ids), batch_size):
                chunk = ids[i : i + batch_size]
                images = [data.load_image(image_id) for image_id in chunk]
                arr[i : i + len(chunk)] = backbone.encode_images(images).numpy().astype(np.float16)
                progress.advance(task, len(chunk))
        arr.flush()
        del arr
        atomic_write_json(meta_path, {"ids": ids, "backbone": backbone.name, "data": data.name, "split": split})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.time() - start
    log(f"encoded {len(ids)} {split} images with {backbone.name} in {seconds:.1f} s -> {path.name}")
    return FeatureSet(ids, np.load(path, mmap_mode="r"), path, False, seconds)
