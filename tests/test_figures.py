"""The report's figures say what their captions say: every run is seen beside its comparison, legends match the
marks, attention maps share one colour scale with a bar, compared loss panels share a y scale, and each PNG has
its SVG. The drawing functions return matplotlib Figures, inspected here without looking at pixels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from ablations.report import figures
from ablations.report.collect import collect
from ablations.decide.stats import Interval
from ablations.tables import load_table
from ablations.decide.verdicts import COLLAPSED, comparison_rows

EVIDENCE = Path(__file__).resolve().parents[1] / "reports"
TABLE = "flickr8k-smollm2"  # 2 of 3 seed-recipe seeds collapsed, the other did not: a guarded (hollow) mark


@pytest.fixture(scope="module")
def smollm2():
    table_runs = collect(load_table(TABLE), EVIDENCE / TABLE / "runs")
    comparisons = comparison_rows(table_runs)
    values = figures.run_values(table_runs, comparisons)
    collapsed = figures.collapsed_runs(table_runs)
    fig = figures.draw_comparisons(comparisons, values, collapsed)
    yield table_runs, comparisons, values, collapsed, fig
    figures._pyplot().close(fig)


def _strip_axes(fig):
    return [ax for ax in fig.axes if "every run" in ax.get_title()]


def _forest_axes(fig):
    return [ax for ax in fig.axes if "seed-level 95% CI" in ax.get_title()]


def test_the_comparisons_figure_has_one_strip_point_per_finished_run(smollm2):
    table_runs, comparisons, _, _, fig = smollm2
    strips = _strip_axes(fig)
    assert len(strips) == len(comparisons) == len(_forest_axes(fig))
    for ax, metric in zip(strips, comparisons):
        variants = [table_runs.table.reference] + [x["variant"] for x in comparisons[metric]]
        for v in variants:
            points = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections
                                     if c.get_label() in (f"runs of {v}", f"collapsed runs of {v}")])
            expected = table_runs.run_means(v, metric)  # the per-run values the seed-level test compares
            assert sorted(points) == pytest.approx(sorted(expected[~np.isnan(expected)])), (metric, v)
            mean = [line for line in ax.lines if line.get_label() == f"mean of {v}"]
            assert len(mean) == 1 and mean[0].get_xdata()[0] == pytest.approx(np.nanmean(expected))
        n_runs = sum(len(c.get_offsets()) for c in ax.collections if "runs of" in c.get_label())
        assert n_runs == sum((~np.isnan(table_runs.run_means(v, metric))).sum() for v in variants) == 18


def test_collapsed_runs_are_crosses_and_only_they(smollm2):
    table_runs, _, _, collapsed, fig = smollm2
    r = table_runs.runs
    expected = {(v, int(s)) for v, s, e, f in zip(r["variant"], r["seed"], r["empty_rate"], r["eos_first_rate"])
                if e >= COLLAPSED or f >= COLLAPSED}
    assert collapsed == expected and {("seed-recipe", 1), ("seed-recipe", 2)} <= collapsed
    ax = _strip_axes(fig)[0]
    crosses = [c for c in ax.collections if c.get_label().startswith("collapsed runs of")]
    assert sum(len(c.get_offsets()) for c in crosses) == len(collapsed)
    dots = [c for c in ax.collections if c.get_label().startswith("runs of")]
    assert all(len(c.get_offsets()) for c in dots)


def test_p_above_counts_seed_pairs_and_ties_half():
    assert figures.p_above([1.0, 2.0], [1.5]) == 0.5
    assert figures.p_above([1.0], [1.0]) == 0.5
    assert figures.p_above([3.0, 3.0], [1.0, 2.0]) == 1.0
    assert figures.p_above([0.0, 0.0, 1.0], [0.5, 2.0]) == pytest.approx(1 / 6)
    assert np.isnan(figures.p_above([], [1.0]))


def test_the_forest_annotation_shows_delta_and_p_over_seed_pairs(smollm2):
    _, comparisons, values, _, fig = smollm2
    shares = figures.seed_pair_shares(values)
    sides = [ax for ax in fig.axes if any("Δ" in t.get_text() for t in ax.get_yticklabels())]
    assert len(sides) == len(comparisons)
    for side, (metric, rows) in zip(sides, comparisons.items()):
        labels = [t.get_text() for t in side.get_yticklabels()][::-1]  # top row first: the reference, then variants
        for x, label in zip(rows, labels[1:]):
            p = shares[metric][x["variant"]]
            assert label == f"Δ {x['test'].interval.estimate:+.3f}   P {p:.2f}"
    assert shares["CIDEr"]["blind"] == 0.0 and shares["nll_gap"]["no-lora"] == pytest.approx(8 / 9)


def test_every_legend_handle_looks_like_the_marks_it_names(smollm2):
    _, _, _, _, fig = smollm2
    handles = {h.get_label(): h for h in fig.legends[0].legend_handles}
    marks = [c for ax in _forest_axes(fig) for c in ax.containers]
    assert marks and any(c.get_label() == "not decided (guard)" for c in marks)  # a hollow mark is drawn
    for c in marks:
        line, handle = c.lines[0], handles[c.get_label()]
        assert to_rgba(handle.get_markerfacecolor()) == to_rgba(line.get_markerfacecolor()), c.get_label()
        assert to_rgba(handle.get_color()) == to_rgba(line.get_color())
        assert handle.get_marker() == line.get_marker()
    for ax in _strip_axes(fig):
        for c in ax.collections:
            handle = handles["one run (seed number beside it)" if c.get_label().startswith("runs of")
                             else next(k for k in handles if k.startswith("a run that collapsed"))]
            assert to_rgba(handle.get_color()) == tuple(c.get_facecolor()[0] if len(c.get_facecolor())
                                                        else c.get_edgecolor()[0])


def test_axes_carry_units(smollm2):
    _, _, _, _, fig = smollm2
    forest = [ax.get_xlabel() for ax in _forest_axes(fig)]
    assert forest[0] == "Δ CIDEr (variant − full), CIDEr-D units" and "nats/token" in forest[1]
    assert all(figures.UNITS[m] in ax.get_xlabel() for ax, m in zip(_strip_axes(fig), ["CIDEr", "nll_gap"]))


def _loss(variant, base):
    return {"variant": variant, "epochs": [1.0, 2.0, 3.0], "train": [base + 1, base + 0.5, base + 0.3],
            "dev": [base + 0.8, base + 0.6, base + 0.5]}


def test_loss_panels_share_one_y_scale_except_another_text_format():
    loss = [_loss("full", 2.0), _loss("blind", 2.6), _loss("seed-recipe", 0.1)]
    scst = [{"variant": v, "epochs": [4.0, 5.0], "reward": r, "dev": [d, d]}
            for v, r, d in [("full", [0.7, 0.8], 2.5), ("blind", [0.05, 0.1], 3.1)]]
    fig = figures.draw_loss(loss, scst, figures.loss_scales({"full": {}, "blind": {"model": {"recipe": "fixed"}},
                                                             "seed-recipe": {"model": {"recipe": "seed"}}}))
    panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_title()}
    full, blind, seed = panels["full"], panels["blind"], panels["seed-recipe"]
    assert full.get_shared_y_axes().joined(full, blind) and full.get_ylim() == blind.get_ylim()
    assert not full.get_shared_y_axes().joined(full, seed) and "own y scale" in seed.get_title()
    assert full.get_ylim()[0] <= 2.5 and full.get_ylim()[1] >= 3.6  # both variants' curves inside one scale
    rewards = [ax for ax in fig.axes if ax.get_ylabel() == "reward, CIDEr-D units"]
    assert len(rewards) == 2 and rewards[0].get_shared_y_axes().joined(*rewards)
    labels = [h.get_label() for h in fig.legends[0].legend_handles]
    assert any("candidate CIDEr-D" in x for x in labels) and any("dev loss" in x for x in labels)
    figures._pyplot().close(fig)


def test_attention_maps_share_one_colour_scale_with_a_colour_bar():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 4, 17))  # 2 layers, 4 queries, a ViT's CLS + 4 x 4 patches
    maps[-1, 2, 5] = 40.0  # one peaked query: a per-panel scale would differ from the others
    maps /= maps.sum(-1, keepdims=True)
    fig = figures.draw_attention(Image.new("RGB", (64, 64), "grey"), maps, "test")
    overlays = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == figures.ATTENTION_CMAP]
    assert len(overlays) == 4
    assert len({id(im.norm) for im in overlays}) == 1
    patches = maps[-1, :, 1:] / maps[-1, :, 1:].sum(-1, keepdims=True)
    scales = {(im.norm.vmin, im.norm.vmax) for im in overlays}
    assert len(scales) == 1 and next(iter(scales)) == (0.0, pytest.approx(patches.max()))
    bars = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    assert len(bars) == 1
    norm = bars[0]._colorbar.mappable.norm
    assert (norm.vmin, norm.vmax) == (overlays[0].norm.vmin, overlays[0].norm.vmax)
    assert "attention" in bars[0]._colorbar.ax.get_ylabel()
    figures._pyplot().close(fig)


def test_an_svg_is_written_beside_every_png(smollm2, tmp_path):
    table_runs, comparisons, *_ = smollm2
    names = [figures.forest_plot(comparisons, tmp_path / "comparisons.png", table_runs),
             figures.loss_plot([_loss("full", 2.0), _loss("blind", 2.6)], [], tmp_path / "loss.png"),
             figures.budget_plot({"CIDEr": {"full": {1: Interval(0.3, 0.2, 0.4, 0.01, 3),
                                                     2: Interval(0.4, 0.3, 0.5, 0.01, 3)}}}, "test",
                                 tmp_path / "budgets.png")]
    maps = np.full((1, 3, 16), 1 / 16)
    names += list(figures.attention_pictures({"a.png": maps}, lambda i: Image.new("RGB", (32, 32)),
                                             tmp_path / "attention", "full").values())
    assert names == ["comparisons.png", "loss.png", "budgets.png", "full_a_layer0_grid.png"]
    pngs = sorted(tmp_path.rglob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        svg = png.with_suffix(".svg")
        assert svg.is_file(), f"{png.name}: no SVG beside it"
        assert "<svg" in svg.read_text()[:2000]
    first = (tmp_path / "comparisons.svg").read_bytes()
    figures.forest_plot(comparisons, tmp_path / "comparisons.png", table_runs)
    assert (tmp_path / "comparisons.svg").read_bytes() == first  # reproducible: no date, fixed ids
