"""Looking inside a trained model: where the Q-Former's queries look (maps; on ``shapes`` a grounding
score against the objects' pixels) and how much the LM reads the visual tokens while it writes.

Grounding: a query's attention mass on object pixels (each patch token counted by the share of its
pixels that belong to an object) against the objects' share of the image, which is what attention
spread evenly over the image would give (chance). Specialisation: per-query entropy of the map and
the mean pairwise overlap (histogram intersection) of the queries' maps.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vlm_core.atomic import atomic_write
from vlm_core.errors import UserError
from vlm_core.language import caption_token_ids
from vlm_core.model import CaptionModel
from vlm_core.shapes import object_masks

BATCH = 50


def patch_grid(n_tokens: int, grid: tuple[int, int] | None) -> tuple[int, int, int]:
    """(rows, cols, leading non-patch tokens) of the encoder's tokens: CNN grids as given, ViTs a CLS + square."""
    if grid is not None:
        return grid[0], grid[1], n_tokens - grid[0] * grid[1]
    side = int(math.isqrt(n_tokens - 1))
    if side * side != n_tokens - 1:
        raise UserError(f"cannot lay {n_tokens} vision tokens out as a patch grid")
    return side, side, 1


def coverage(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Share of each patch's pixels that are object pixels, row-major [rows * cols]."""
    img = Image.fromarray(mask.astype(np.float32))
    return np.asarray(img.resize((cols, rows), Image.BOX), dtype=np.float64).reshape(-1)


def patch_maps(maps: torch.Tensor, grid) -> tuple[torch.Tensor, int, int]:
    """Attention [..., N tokens] -> [..., rows*cols] over the patches only (a CLS dropped, renormalised)."""
    rows, cols, lead = patch_grid(maps.shape[-1], grid)
    maps = maps[..., lead:]
    return maps / maps.sum(-1, keepdim=True).clamp(min=1e-12), rows, cols


def grounding(model: CaptionModel, x: torch.Tensor, labels: list[dict], grid) -> tuple[pd.DataFrame, dict] | None:
    """Per-image attention mass on objects and its chance level, and the table-wide scalars."""
    mass, chance, entropy, overlap = [], [], [], []
    for i in range(0, len(labels), BATCH):
        maps = model.query_attention(x[i : i + BATCH])
        if maps is None:
            return None
        maps, rows, cols = patch_maps(maps, grid)
        cover = torch.tensor(np.stack([coverage(np.any([m for _, m in object_masks(lab)], axis=0), rows, cols)
                                       for lab in labels[i : i + BATCH]]), dtype=torch.float32)
        mass.append((maps * cover[None, :, None, :]).sum(-1).mean(dim=(0, 2)))
        chance.append(cover.mean(-1))
        entropy.append(-(maps * maps.clamp(min=1e-12).log()).sum(-1).mean(dim=(0, 2)))
        q = maps.shape[2]
        pairs = [(a, b) for a in range(q) for b in range(a + 1, q)]
        if pairs:
            overlap.append(torch.stack([torch.minimum(maps[:, :, a], maps[:, :, b]).sum(-1) for a, b in pairs])
                           .mean(dim=(0, 1)))
    mass, chance, entropy = torch.cat(mass).numpy(), torch.cat(chance).numpy(), torch.cat(entropy).numpy()
    per_image = pd.DataFrame({"grounding_mass": mass, "grounding_chance": chance, "grounding_excess": mass - chance,
                              "query_entropy": entropy})
    scalars = {"grounding_mass": float(mass.mean()), "grounding_chance": float(chance.mean()),
               "grounding_ratio": float(mass.mean() / max(chance.mean(), 1e-12)),
               "query_entropy": float(entropy.mean()), "query_entropy_max": math.log(maps.shape[-1]),
               "query_overlap": float(torch.cat(overlap).mean()) if overlap else float("nan")}
    return per_image, scalars


def visual_reliance(model: CaptionModel, x: torch.Tensor, captions: list[str]) -> tuple[np.ndarray, dict]:
    """Per image, the LM's attention share on the visual prefix (mean over layers) while writing its own
    caption; scalars: the mean and the mean per layer."""
    ids = caption_token_ids(model.tokenizer, captions, model.cfg.max_caption_tokens)
    rows = [[model.text.start_id] + t for t in ids]
    shares = torch.cat([model.visual_attention_share(x[i : i + BATCH], rows[i : i + BATCH])
                        for i in range(0, len(rows), BATCH)], dim=1).numpy()  # [layers, images]
    scalars = {"visual_reliance": float(shares.mean())}
    scalars.update({f"visual_reliance_layer_{k}": float(v) for k, v in enumerate(shares.mean(1))})
    return shares.mean(0), scalars


# ---- pictures
def render_maps(image: Image.Image, maps: torch.Tensor, grid, out_dir: Path, stem: str,
                per_query: bool = True) -> list[Path]:
    """For one image and maps [layers, Q, N]: each query's map per layer, upsampled and overlaid
    (``<stem>_layer<l>_query<q>.png``), and one grid of all queries per layer (``<stem>_layer<l>_grid.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps, rows, cols = patch_maps(maps, grid)
    maps = maps.reshape(*maps.shape[:2], rows, cols).numpy()
    w, h = image.size
    written = []

    def overlay(ax, m, title):
        ax.imshow(image)
        ax.imshow(m, extent=(0, w, h, 0), cmap="magma", alpha=0.55, interpolation="bilinear", vmin=0, vmax=m.max())
        ax.set_title(title, fontsize=8)
        ax.axis("off")

    def save(fig, path):
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
        plt.close(fig)
        written.append(path)

    for layer, layer_maps in enumerate(maps):
        n = len(layer_maps)
        ncol = min(n, 8)
        fig, axes = plt.subplots(math.ceil(n / ncol), ncol, figsize=(1.6 * ncol, 1.7 * math.ceil(n / ncol)), squeeze=False)
        for q, ax in enumerate(axes.flat):
            if q < n:
                overlay(ax, layer_maps[q], f"query {q}")
            else:
                ax.axis("off")
        fig.suptitle(f"{stem}: cross-attention layer {layer}, mean over heads", fontsize=9)
        save(fig, Path(out_dir) / f"{stem}_layer{layer}_grid.png")
        if per_query:
            for q in range(n):
                fig, ax = plt.subplots(figsize=(2.6, 2.6))
                overlay(ax, layer_maps[q], f"{stem} layer {layer} query {q}")
                save(fig, Path(out_dir) / f"{stem}_layer{layer}_query{q}.png")
    return written


def maps_for_images(model: CaptionModel, features: torch.Tensor, run_name: str) -> torch.Tensor:
    maps = model.query_attention(features)
    if maps is None:
        raise UserError(f"{run_name}: this run has no Q-Former (connector = {model.cfg.connector}), so there is no "
                        "query attention to show; try a run of a Q-Former variant such as `full`")
    return maps
