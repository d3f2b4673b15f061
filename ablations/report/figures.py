"""The report's pictures, drawn from collected and analysed runs only (no model is loaded: attention maps
were stored by each run when it finished). Each ``draw_*`` function returns a matplotlib Figure (what the tests
inspect); each ``*_plot`` / ``*_pictures`` function draws, writes the PNG the report links and an SVG of the same
name beside it, and returns the PNG's name."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlm_core.atomic import atomic_write

from ablations.report.analysis import COMPARED
from ablations.measure.attention import patch_maps
from ablations.decide.stats import Interval
from ablations.decide.verdicts import COLLAPSED

# The unit of each compared quantity (per-image values averaged over a run's images), for axis labels.
UNITS = {"CIDEr": "CIDEr-D units", "nll_gap": "nats/token", "slot_relation": "share correct on two-object images"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, dpi: int = 90, tight: bool = False) -> str:
    """``out`` (PNG) and the same figure as SVG beside it (``out`` with .svg); reproducible bytes (no date, fixed
    SVG ids). Returns the PNG's name."""
    import matplotlib

    box = {"bbox_inches": "tight"} if tight else {}
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=dpi, metadata={"Software": None}, **box))
    with matplotlib.rc_context({"svg.hashsalt": "ablate", "svg.fonttype": "none"}):
        atomic_write(out.with_suffix(".svg"), lambda p: fig.savefig(p, format="svg", metadata={"Date": None}, **box))
    _pyplot().close(fig)
    return out.name


def _unit(metric: str) -> str:
    return UNITS.get(metric, "")


# ---- loss per epoch
LOSS_SCALE_NOTE = {"seed": "seed recipe: its loss also counts the padding, own y scale"}


def loss_scales(configs: dict[str, dict]) -> dict[str, str]:
    """variant -> the text format its loss is counted on (model.recipe): panels of one format share a y scale."""
    return {v: c.get("model", {}).get("recipe", "fixed") for v, c in configs.items()}


def draw_loss(loss: list[dict], self_critical: list[dict], scales: dict[str, str] | None = None):
    """One panel per variant: train and dev loss per epoch (and at dev checks inside epochs), means over seeds
    from the analysis. Every panel whose loss counts the same tokens shares one y scale (so that e.g. blind's and
    full's dev loss can be compared by eye); a variant of another text format (the seed recipe counts its
    padding) has its own, named in its title. Self-critical epochs continue the dev loss after a dashed line,
    with the mean candidate reward (CIDEr-D) on the panel's right axis, one scale for every panel."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    scales = scales or {}
    formats = [scales.get(x["variant"], "fixed") for x in loss]
    common = max(set(formats), key=formats.count) if formats else "fixed"
    scst = {x["variant"]: x for x in self_critical}
    cols = min(3, len(loss))
    rows = -(-len(loss) // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows + 0.35), squeeze=False)
    first_of, first_right = {}, None
    for ax, x, form in zip(axes.flat, loss, formats):
        if form in first_of:
            ax.sharey(first_of[form])
        first_of.setdefault(form, ax)
        ce = x["epochs"][-1]
        ax.plot(x["epochs"], x["train"], marker="o", color="tab:blue", label="train loss")
        after = scst.get(x["variant"], {"epochs": [], "dev": []})
        ax.plot(x["epochs"] + after["epochs"], x["dev"] + after["dev"], marker="s", color="tab:orange",
                label="dev loss")
        if x["variant"] in scst:
            ax.axvline(ce + 0.5, color="grey", linestyle="--", linewidth=0.8)
            right = ax.twinx()
            if first_right is not None:
                right.sharey(first_right)
            first_right = first_right or right
            right.plot(after["epochs"], after["reward"], marker="^", color="tab:green", label="candidate CIDEr-D")
            right.set_ylabel("reward, CIDEr-D units", fontsize=7, color="tab:green")
            right.tick_params(labelsize=7)
        note = "" if form == common else f"\n({LOSS_SCALE_NOTE.get(form, f'{form} format: own y scale')})"
        ax.set_title(x["variant"] + note, fontsize=9 if not note else 8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss, nats/token", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(loss):]:
        ax.axis("off")
    handles = [Line2D([], [], marker="o", color="tab:blue", label="train loss (mean of seeds)"),
               Line2D([], [], marker="s", color="tab:orange", label="dev loss (mean of seeds)")]
    if scst:
        handles += [Line2D([], [], color="grey", linestyle="--", linewidth=0.8, label="self-critical epochs start"),
                    Line2D([], [], marker="^", color="tab:green",
                           label="mean candidate CIDEr-D (self-critical; right axis)")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / (2.9 * rows + 0.35), 1, 1))
    return fig


def loss_plot(loss: list[dict], self_critical: list[dict], out: Path, configs: dict[str, dict] | None = None) -> str:
    """loss.png (and .svg): ``draw_loss``; ``configs`` (variant -> a run's stored config) name each variant's
    text format, which decides the panels that share a y scale."""
    return _save(draw_loss(loss, self_critical, loss_scales(configs or {})), out)


# ---- comparisons with the reference: forest plot and every run
FOREST_COLOURS = {"decided below 0": "tab:red", "decided above 0": "tab:blue", "inconclusive": "grey",
                  "not decided (guard)": "tab:orange"}
HOLLOW = {"not decided (guard)"}  # drawn with a white face: the legend's handle is too
RUN_COLOUR = "dimgrey"


def _kind(t) -> str:
    if t.guard:
        return "not decided (guard)"
    if t.decision == "inconclusive":
        return "inconclusive"
    return f"decided {'below' if t.interval.estimate < 0 else 'above'} 0"


def run_values(table_runs, comparisons: dict[str, list[dict]]) -> dict[str, dict[str, dict[int, float]]]:
    """Per compared quantity: variant (the reference first) -> seed -> that run's mean over images, the values
    the seed-level tests compare (TableRuns.run_means, NaN images skipped)."""
    out = {}
    for metric, rows in comparisons.items():
        if not rows:
            continue
        ref = rows[0]["comparison"].reference
        out[metric] = {}
        for v in [ref] + [x["variant"] for x in rows]:
            means = table_runs.matrix(v, metric).mean(axis=0)
            out[metric][v] = {int(s): float(m) for s, m in means.items() if not np.isnan(m)}
    return out


def collapsed_runs(table_runs) -> set[tuple[str, int]]:
    """(variant, seed) of every run that collapsed: at least COLLAPSED of its captions empty or EOS first (the
    definition the seeds-disagree guard uses)."""
    r = table_runs.runs
    if r.empty or "empty_rate" not in r:
        return set()
    kind = (r["empty_rate"] >= COLLAPSED) | (r["eos_first_rate"] >= COLLAPSED if "eos_first_rate" in r else False)
    return {(v, int(s)) for v, s in zip(r.loc[kind, "variant"], r.loc[kind, "seed"])}


def p_above(variant: list[float] | np.ndarray, reference: list[float] | np.ndarray) -> float:
    """The share of (variant seed, reference seed) pairs where the variant's value is above the reference's,
    ties counted half (the common-language effect size); NaN without a pair."""
    x, y = np.asarray(variant, float), np.asarray(reference, float)
    if not x.size or not y.size:
        return float("nan")
    d = x[:, None] - y[None, :]
    return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)


def seed_pair_shares(values: dict[str, dict[str, dict[int, float]]]) -> dict[str, dict[str, float]]:
    """Per quantity: variant -> P(variant above the reference) over seed pairs (``p_above``), from ``run_values``."""
    out = {}
    for metric, by_variant in values.items():
        ref, *variants = list(by_variant)
        out[metric] = {v: p_above(list(by_variant[v].values()), list(by_variant[ref].values())) for v in variants}
    return out


def _strip(ax, names: list[str], values: dict[str, dict[int, float]], ref: str, collapsed: set) -> None:
    """One dot per run (seeds spread vertically inside the variant's row, each labelled with its seed; a run
    that collapsed is a cross), the variant's mean as a black bar, the reference's mean as a dotted line."""
    n = len(names)
    for k, v in enumerate(names):
        y0 = n - 1 - k
        seeds = sorted(values.get(v, {}))
        if not seeds:
            continue
        vals = np.array([values[v][s] for s in seeds])
        ys = y0 + (np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else np.zeros(1))
        down = np.array([(v, s) in collapsed for s in seeds])
        ax.scatter(vals[~down], ys[~down], s=16, marker="o", color=RUN_COLOUR, zorder=3, label=f"runs of {v}")
        if down.any():
            ax.scatter(vals[down], ys[down], s=22, marker="x", color="black", linewidths=1.2, zorder=3,
                       label=f"collapsed runs of {v}")
        for s, xv, yv in zip(seeds, vals, ys):
            ax.annotate(str(s), (xv, yv), xytext=(3, 0), textcoords="offset points", fontsize=5.5, va="center",
                        color=RUN_COLOUR)
        ax.plot([vals.mean()], [y0], marker="|", markersize=14, markeredgewidth=2, color="black", linestyle="",
                zorder=4, label=f"mean of {v}")
    if values.get(ref):
        ax.axvline(float(np.mean(list(values[ref].values()))), color="black", linestyle=":", linewidth=0.8)


def draw_comparisons(comparisons: dict[str, list[dict]], values: dict[str, dict[str, dict[int, float]]] | None = None,
                     collapsed: set[tuple[str, int]] = frozenset()):
    """One row per compared quantity. Left, the forest plot: each variant − reference with its seed-level 95% CI,
    coloured by the family's (Holm) decision (decided below or above 0, inconclusive, or not decided: a guard,
    drawn hollow), and on its right axis Δ and P(variant above the reference) over seed pairs. Right, every run:
    one dot per seed of the quantity's raw per-run value (``values``, from ``run_values``), the variant's mean
    marked, and a run in ``collapsed`` (variant, seed) drawn as a cross, so that a collapsed seed is seen. None
    without any comparison."""
    from matplotlib.lines import Line2D

    panels = {m: rows for m, rows in comparisons.items() if rows}
    if not panels:
        return None
    values = values or {}
    strips = any(m in values for m in panels)
    n_rows = max(len(rows) for rows in panels.values()) + 1
    height = 0.9 + 0.36 * n_rows
    legend_h = 0.45
    fig, axes = _pyplot().subplots(len(panels), 2 if strips else 1, squeeze=False,
                                   figsize=(10.5 if strips else 5.6, height * len(panels) + legend_h),
                                   gridspec_kw={"width_ratios": [1.15, 1]} if strips else None)
    for (forest, *strip), (metric, rows) in zip(axes, panels.items()):
        ref = rows[0]["comparison"].reference
        label = COMPARED.get(metric, metric)
        names = [ref] + [x["variant"] for x in rows]
        n = len(names)
        shares = seed_pair_shares({metric: values[metric]})[metric] if metric in values else {}
        right_labels = [""]
        for k, x in enumerate(rows, start=1):
            t, y = x["test"], n - 1 - k
            i, kind = t.interval, _kind(t)
            low, high = (i.low, i.high) if i.decided else (i.estimate, i.estimate)
            forest.errorbar([i.estimate], [y], xerr=[[i.estimate - low], [high - i.estimate]], fmt="o", capsize=3,
                            color=FOREST_COLOURS[kind], mfc="white" if kind in HOLLOW else FOREST_COLOURS[kind],
                            label=kind)
            p = shares.get(x["variant"])
            right_labels.append(f"Δ {i.estimate:+.3f}" + ("" if p is None or np.isnan(p) else f"   P {p:.2f}"))
        forest.axvline(0, color="black", linewidth=0.8)
        for ax in [forest, *strip]:
            for y in range(n - 2, -1, -2):  # every other row shaded, so that a row reads across both panels
                ax.axhspan(y - 0.5, y + 0.5, color="0.94", zorder=0, linewidth=0)
        forest.set_ylim(-0.6, n - 0.4)
        forest.set_yticks(range(n))
        forest.set_yticklabels([f"{v} (reference)" if v == ref else v for v in reversed(names)], fontsize=8)
        forest.set_title(f"Δ{label} vs {ref}: seed-level 95% CI", fontsize=9)
        forest.set_xlabel(f"Δ {label} (variant − {ref}), {_unit(metric)}", fontsize=8)
        forest.tick_params(axis="x", labelsize=7)
        forest.grid(alpha=0.3, axis="x")
        side = forest.twinx()
        side.set_ylim(forest.get_ylim())
        side.set_yticks(range(n))
        side.set_yticklabels(list(reversed(right_labels)), fontsize=7)
        side.tick_params(axis="y", length=0)
        side.annotate(f"Δ   P(> {ref})" if shares else "Δ", (1, 1), xycoords="axes fraction", xytext=(6, 3),
                      textcoords="offset points", fontsize=7, fontweight="bold", ha="left", va="bottom")
        if strip:
            ax = strip[0]
            ax.sharey(forest)
            _strip(ax, names, values.get(metric, {}), ref, set(collapsed))
            ax.tick_params(axis="y", labelleft=False)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{label}, every run (one dot per seed)", fontsize=9)
            ax.set_xlabel(f"{label} per run, {_unit(metric)}", fontsize=8)
            ax.grid(alpha=0.3, axis="x")
    handles = [Line2D([], [], marker="o", linestyle="-", color=c, mfc="white" if k in HOLLOW else c, label=k)
               for k, c in FOREST_COLOURS.items()]
    if strips:
        handles += [Line2D([], [], marker="o", linestyle="", color=RUN_COLOUR, label="one run (seed number beside it)"),
                    Line2D([], [], marker="x", linestyle="", color="black",
                           label=f"a run that collapsed (≥ {COLLAPSED:.0%} empty or EOS first)"),
                    Line2D([], [], marker="|", markersize=10, markeredgewidth=2, linestyle="", color="black",
                           label="mean of the variant's runs"),
                    Line2D([], [], color="black", linestyle=":", linewidth=0.8, label="reference's mean")]
    fig.legend(handles=handles, loc="lower center", ncol=4 if strips else 2, fontsize=7, frameon=False)
    total = height * len(panels) + legend_h
    fig.tight_layout(rect=(0, legend_h / total, 1, 1))
    return fig


def forest_plot(comparisons: dict[str, list[dict]], out: Path, table_runs=None) -> str | None:
    """comparisons.png (and .svg): ``draw_comparisons``, with every run's value when ``table_runs`` is given."""
    fig = (draw_comparisons(comparisons) if table_runs is None
           else draw_comparisons(comparisons, run_values(table_runs, comparisons), collapsed_runs(table_runs)))
    return None if fig is None else _save(fig, out)


# ---- training budgets
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
        ax.set_xlabel("training epochs (log2 axis)")
        label = COMPARED.get(quantity, quantity)
        ax.set_ylabel(f"{label} ({eval_split} split)" + (f", {_unit(quantity)}" if _unit(quantity) else ""))
        ax.set_title(f"{label}: mean of seeds, 95% CI")
        ax.grid(alpha=0.3)
    axes[0][0].legend(title="variant (dot and bar: mean, 95% CI)", title_fontsize=7, fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


# ---- where the Q-Former looks
ATTENTION_CMAP = "magma"


def draw_attention(image, maps: np.ndarray, title: str, layer: int = -1):
    """Every query's cross-attention map of one layer (mean over heads; the last by default) over the patches,
    overlaid on the image: ONE colour scale for the whole figure (0 to the largest patch weight of any query)
    and its colour bar, so that panels compare. ``maps``: [layers, queries, tokens] or [queries, tokens]."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    m = torch.from_numpy(np.asarray(maps)).float()
    m = m[layer] if m.dim() == 3 else m
    layer = layer % len(maps) if np.asarray(maps).ndim == 3 else 0
    side = int(np.sqrt(m.shape[-1]))  # a square count of tokens is a CNN grid, one more a ViT's CLS + grid
    grid = (side, side) if side * side == m.shape[-1] else None
    m, rows, cols = patch_maps(m, grid)
    m = m.reshape(len(m), rows, cols).numpy()
    norm = Normalize(vmin=0.0, vmax=float(m.max()) or 1.0)
    n = len(m)
    ncol = min(n, 8)
    nrow = -(-n // ncol)
    w, h = image.size
    fig, axes = _pyplot().subplots(nrow, ncol, figsize=(1.6 * ncol + 1.0, 1.7 * nrow + 0.4), squeeze=False)
    for q, ax in enumerate(axes.flat):
        ax.axis("off")
        if q < n:
            ax.imshow(image)
            ax.imshow(m[q], extent=(0, w, h, 0), cmap=ATTENTION_CMAP, norm=norm, alpha=0.55, interpolation="bilinear")
            ax.set_title(f"query {q}", fontsize=8)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=ATTENTION_CMAP), ax=axes.ravel().tolist(), fraction=0.025,
                       pad=0.02, alpha=0.55)
    bar.set_label("attention weight per patch\n(share of the query's attention)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(f"{title}: cross-attention layer {layer}, mean over heads; one colour scale for every query",
                 fontsize=9)
    return fig


def attention_pictures(maps_by_image: dict[str, np.ndarray], load_image, out_dir: Path, stem: str) -> dict[str, str]:
    """One grid of every query's map per stored image and layer (``draw_attention``, each with its .svg:
    ``<stem>_<image>_layer<l>_grid.png``); image id -> the last layer's file name (what the report shows)."""
    out = {}
    for image_id, maps in maps_by_image.items():
        maps = np.asarray(maps)
        name = f"{stem}_{Path(image_id).stem}"
        image = load_image(image_id)
        for layer in range(len(maps) if maps.ndim == 3 else 1):
            fig = draw_attention(image, maps, name, layer)
            out[image_id] = _save(fig, out_dir / f"{name}_layer{layer}_grid.png", dpi=100, tight=True)
    return out


def thumbnails(ids: list[str], load_image, out_dir: Path) -> dict[str, str]:
    """96-pixel PNGs of the gallery images (photos, not figures: no SVG); image id -> file name. Thumbnails of
    images no longer in the gallery are removed (the folder holds what the report shows, nothing else)."""
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
