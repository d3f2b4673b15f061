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
from .budgets import QUANTITIES, seed_mean, series
from .collect import TableRuns


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> str:
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=90, metadata={"Software": None}))
    _pyplot().close(fig)
    return out.name


def loss_plot(histories: dict[str, list[pd.DataFrame]], out: Path) -> str:
    """Train and dev loss per epoch, mean over seeds, one line per variant."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = _pyplot().subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for name, hs in histories.items():
        mean = pd.concat(hs).groupby("epoch").mean()
        axes[0].plot(mean.index, mean["train_loss"], marker="o", label=name)
        axes[1].plot(mean.index, mean["dev_loss"], marker="o", label=name)
    for ax, title in zip(axes, ["train loss", "dev loss (nats/token)"]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def budget_plot(table_runs: TableRuns, out: Path) -> str | None:
    """CIDEr and the likelihood-swap gap against epochs (log2 axis), mean and seed-level 95% CI per variant."""
    rows = series(table_runs)
    if not rows:
        return None
    import matplotlib

    fig, axes = _pyplot().subplots(1, len(QUANTITIES), figsize=(5 * len(QUANTITIES), 3.6))
    for ax, quantity in zip(axes, QUANTITIES):
        for k, (variant, by_budget) in enumerate(rows.items()):
            budgets = list(by_budget)
            means = [seed_mean(table_runs, by_budget[b], quantity) for b in budgets]
            y = np.array([m.estimate for m in means])
            low = np.array([m.low if m.decided else m.estimate for m in means])
            high = np.array([m.high if m.decided else m.estimate for m in means])
            dodge = 2 ** (0.04 * (k - (len(rows) - 1) / 2))  # side by side, so the CIs do not hide each other
            ax.errorbar(np.array(budgets) * dodge, y, yerr=[y - low, high - y], marker="o", capsize=3, label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({b for r in rows.values() for b in r}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("training epochs")
        ax.set_ylabel(f"{COMPARED.get(quantity, quantity)} ({table_runs.table.data.eval_split} split)")
        ax.set_title(f"{COMPARED.get(quantity, quantity)}: mean of seeds, 95% CI")
        ax.grid(alpha=0.3)
    axes[0].legend()
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
    """96-pixel PNGs of the gallery images; image id -> file name."""
    out = {}
    for image_id in ids:
        img = load_image(image_id).resize((96, 96))
        path = out_dir / (Path(image_id).stem + ".png")
        atomic_write(path, lambda p: img.save(p, format="PNG"))
        out[image_id] = path.name
    return out
