"""The report's pictures, drawn from collected and analysed runs only (no model is loaded: attention maps
were stored by each run when it finished). Each function writes its files and returns their names."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vlm_core.atomic import atomic_write

from .analysis import COMPARED
from .attention import render_maps
from .stats import Interval


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> str:
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=90, metadata={"Software": None}))
    _pyplot().close(fig)
    return out.name


def loss_plot(loss: list[dict], self_critical: list[dict], out: Path) -> str:
    """One panel per variant (each on its own scale, so that a collapsed variant's loss flattens no other):
    train and dev loss per epoch (and at dev checks inside epochs), means over seeds from the analysis; self-critical epochs continue the dev
    loss after a dashed line, with the mean candidate reward on the panel's right axis."""
    from matplotlib.ticker import MaxNLocator

    scst = {x["variant"]: x for x in self_critical}
    cols = min(3, len(loss))
    rows = -(-len(loss) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax, x in zip(axes.flat, loss):
        ce = x["epochs"][-1]
        ax.plot(x["epochs"], x["train"], marker="o", color="tab:blue", label="train loss")
        after = scst.get(x["variant"], {"epochs": [], "dev": []})
        ax.plot(x["epochs"] + after["epochs"], x["dev"] + after["dev"], marker="s", color="tab:orange", label="dev loss")
        if x["variant"] in scst:
            ax.axvline(ce + 0.5, color="grey", linestyle="--", linewidth=0.8)
            right = ax.twinx()
            right.plot(after["epochs"], after["reward"], marker="^", color="tab:green", label="candidate CIDEr-D")
            right.set_ylabel("CIDEr-D (self-critical)", fontsize=7, color="tab:green")
            right.tick_params(labelsize=7)
        ax.set_title(x["variant"], fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("nats/token", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(loss):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


FOREST_COLOURS = {"decided below 0": "tab:red", "decided above 0": "tab:blue", "inconclusive": "grey",
                  "not decided (guard)": "tab:orange"}


def forest_plot(comparisons: dict[str, list[dict]], out: Path) -> str | None:
    """Every comparison with the reference: Δ and its seed-level 95% CI, one panel per quantity, coloured by
    the family's (Holm) decision: decided below or above 0, inconclusive, or not decided (a guard)."""
    panels = {m: rows for m, rows in comparisons.items() if rows}
    if not panels:
        return None
    height = 0.8 + 0.38 * max(len(rows) for rows in panels.values())
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(4.4 * len(panels), height), squeeze=False)
    for ax, (metric, rows) in zip(axes[0], panels.items()):
        for y, x in enumerate(reversed(rows)):
            t = x["test"]
            i = t.interval
            kind = "not decided (guard)" if t.guard else ("inconclusive" if t.decision == "inconclusive"
                                                          else f"decided {'below' if i.estimate < 0 else 'above'} 0")
            low, high = (i.low, i.high) if i.decided else (i.estimate, i.estimate)
            ax.errorbar([i.estimate], [y], xerr=[[i.estimate - low], [high - i.estimate]], fmt="o", capsize=3,
                        color=FOREST_COLOURS[kind], mfc="white" if t.guard else FOREST_COLOURS[kind])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([x["variant"] for x in reversed(rows)], fontsize=8)
        ax.set_title(f"Δ{COMPARED.get(metric, metric)} vs reference", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    handles = [_pyplot().Line2D([], [], marker="o", linestyle="", color=c, label=k) for k, c in FOREST_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12 if height < 3 else 0.06, 1, 1))
    return _save(fig, out)


def budget_plot(points: dict[str, dict[str, dict[int, Interval]]], eval_split: str, out: Path) -> str | None:
    """CIDEr and the likelihood-swap gap against epochs (log2 axis), mean and seed-level 95% CI per variant,
    from the analysis (budgets.plotted_points)."""
    if not points:
        return None
    import matplotlib

    fig, axes = _pyplot().subplots(1, len(points), figsize=(5 * len(points), 3.6), squeeze=False)
    for ax, (quantity, rows) in zip(axes[0], points.items()):
        for k, (variant, by_budget) in enumerate(rows.items()):
            budgets = list(by_budget)
            means = list(by_budget.values())
            y = np.array([m.estimate for m in means])
            low = np.array([m.low if m.decided else m.estimate for m in means])
            high = np.array([m.high if m.decided else m.estimate for m in means])
            dodge = 2 ** (0.04 * (k - (len(rows) - 1) / 2))  # side by side, so the CIs do not hide each other
            ax.errorbar(np.array(budgets) * dodge, y, yerr=[y - low, high - y], marker="o", capsize=3, label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({b for r in rows.values() for b in r}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("training epochs")
        ax.set_ylabel(f"{COMPARED.get(quantity, quantity)} ({eval_split} split)")
        ax.set_title(f"{COMPARED.get(quantity, quantity)}: mean of seeds, 95% CI")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    return _save(fig, out)


def attention_pictures(maps_by_image: dict[str, np.ndarray], load_image, out_dir: Path, stem: str) -> dict[str, str]:
    """One grid of every query's map per stored image (the last layer's); image id -> file name."""
    out = {}
    for image_id, maps in maps_by_image.items():
        side = int(np.sqrt(maps.shape[-1]))  # a square count of tokens is a CNN grid, one more a ViT's CLS + grid
        grid = (side, side) if side * side == maps.shape[-1] else None
        paths = render_maps(load_image(image_id), torch.from_numpy(maps).float(), grid, out_dir,
                            f"{stem}_{Path(image_id).stem}", per_query=False)
        out[image_id] = paths[-1].name
    return out


def thumbnails(ids: list[str], load_image, out_dir: Path) -> dict[str, str]:
    """96-pixel PNGs of the gallery images; image id -> file name. Thumbnails of images no longer in the
    gallery are removed (the folder holds what the report shows, nothing else)."""
    out = {}
    for image_id in ids:
        img = load_image(image_id).resize((96, 96))
        path = out_dir / (Path(image_id).stem + ".png")
        atomic_write(path, lambda p: img.save(p, format="PNG"))
        out[image_id] = path.name
    for old in out_dir.glob("*.png") if out_dir.is_dir() else []:
        if old.name not in out.values():
            old.unlink()
    return out
