"""Do the ablation verdicts survive more training? Seed-level comparisons at every training budget.

A table's ``[[sweep]]`` rows over ``train.epochs`` retrain variants at other budgets (each its own run
with its own schedule). For every ablation that has a row at a budget where the reference has one, the
difference ablation - reference is tested over seeds (Welch, as everywhere else) at that budget, and
the sequence of per-budget verdicts is named: it holds at every budget, flips, appears only late,
fades, or stays undecided. A verdict drawn at one small budget means little if it flips later.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlm_core.atomic import atomic_write

from .analysis import COMPARED, fmt_ci
from .collect import TableRuns
from .stats import Interval, one_sample, welch
from .tables import BUDGET_KEY
# The quantities plotted and tested at every budget, and the direction each ablation is expected to
# move them in (from the variant's expectations; other pairs are shown without an expected direction).
QUANTITIES = {"CIDEr": "worse_than_reference", "nll_gap": "uses_image_less"}


def series(tr: TableRuns) -> dict[str, dict[int, str]]:
    """variant -> {epochs: row name}, for every variant with budget rows (its own row included),
    keeping only rows with at least one finished run; epochs as stored with the runs. Empty when the
    table has no budget sweep."""
    table = tr.table
    bases = {v.sweep_of for v in table.variants.values() if v.is_budget_row}
    out = {}
    for base in [b for b in table.variants if b in bases]:
        names = [base] + [v.name for v in table.variants.values() if v.sweep_of == base and v.is_budget_row]
        done = [n for n in names if n in tr.order + tr.sweep_order]
        epochs = {n: tr.configs.get(n, {}).get("train", {}).get("epochs", table.variants[n].train.epochs) for n in done}
        out[base] = {epochs[n]: n for n in sorted(done, key=epochs.get)}
    return out


def seed_mean(tr: TableRuns, row: str, quantity: str) -> Interval:
    """Mean over seeds of the run-level value, with its t 95% CI (the plotted points)."""
    return one_sample(tr.seed_values(row, quantity).to_numpy(dtype=float))


@dataclass
class BudgetVerdict:
    """One ablation on one quantity across budgets: per-budget seed-level differences and their pattern."""

    variant: str
    quantity: str
    expected: bool  # the variant's expectation names this quantity (QUANTITIES)
    budgets: list[int]
    differences: list[Interval]  # variant - reference at each budget
    directions: list[str]  # 'lower' / 'higher' / 'undecided' at each budget
    pattern: str
    sentence: str


def direction(i: Interval) -> str:
    if not i.decided:
        return "undecided"
    return "lower" if i.high < 0 else "higher" if i.low > 0 else "undecided"


def pattern(directions: list[str], wanted: str | None) -> str:
    """Name the sequence of per-budget outcomes (budgets ascending). ``wanted`` is the expected direction
    ('lower') or None when the pair carries no expectation (then the first decided direction is followed)."""
    decided = [d for d in directions if d != "undecided"]
    if not decided:
        return "undecided at every budget"
    if len(set(decided)) > 1:
        return "flips"
    side = decided[0]
    against = wanted is not None and side != wanted
    prefix = "the opposite of the expectation: " if against else ""
    if all(d == side for d in directions):
        return prefix + f"{side} at every budget"
    first = directions.index(side)
    if all(d == side for d in directions[first:]):
        return prefix + f"appears only late ({side} from the {ordinal(first + 1)} budget on, undecided before)"
    last = len(directions) - 1 - directions[::-1].index(side)
    if all(d == side for d in directions[: last + 1]):
        return prefix + f"fades ({side} up to the {ordinal(last + 1)} budget, undecided after)"
    return prefix + f"{side} at {directions.count(side)} of {len(directions)} budgets, undecided at the others"


def ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def verdicts(tr: TableRuns) -> list[BudgetVerdict]:
    """Every ablation with budget rows against the reference's row at the same budget, on each quantity.
    A budget where either side has no value for the quantity is left out (and named in the sentence)."""
    rows = series(tr)
    ref = tr.table.reference
    out = []
    for variant, by_budget in rows.items() if ref in rows else []:
        if variant == ref:
            continue
        shared = [b for b in by_budget if b in rows[ref]]
        for quantity, expectation in QUANTITIES.items():
            diffs = {b: welch(tr.run_means(by_budget[b], quantity), tr.run_means(rows[ref][b], quantity))
                     for b in shared}
            diffs = {b: d for b, d in diffs.items() if not np.isnan(d.estimate)}  # a side without the quantity
            if not diffs:
                continue
            expected = expectation in tr.table.variants[variant].expect
            budgets = list(diffs)
            dirs = [direction(d) for d in diffs.values()]
            name = pattern(dirs, "lower" if expected else None) if len(budgets) > 1 else f"{dirs[0]} at the only budget compared"
            missing = [b for b in shared if b not in diffs]
            out.append(BudgetVerdict(variant, quantity, expected, budgets, list(diffs.values()), dirs, name,
                                     sentence(variant, ref, quantity, expected, budgets, list(diffs.values()), dirs,
                                              name, missing)))
    return out


def sentence(variant: str, ref: str, quantity: str, expected: bool, budgets: list[int], diffs: list[Interval],
             dirs: list[str], name: str, missing: list[int] = ()) -> str:
    """One sentence per verdict, every number from the runs."""
    label = COMPARED.get(quantity, quantity)
    claim = (f"`{variant}` vs `{ref}` on {label}, expected lower" if expected
             else f"`{variant}` vs `{ref}` on {label} (no expectation; shown for completeness)")
    steps = "; ".join(f"{b} epoch{'s' if b != 1 else ''}: {d} {fmt_ci(i)}, {i.n} seeds"
                      for b, d, i in zip(budgets, dirs, diffs))
    gone = f"; not compared at {', '.join(map(str, missing))} epochs (no {label} on one side)" if missing else ""
    return f"{claim}: **{name}** (Δ{label}, seed-level 95% CI — {steps}{gone})."


def budget_table(tr: TableRuns) -> list[list[str]]:
    """Rows for the report: variant, epochs, CIDEr and NLL gap as mean [95% CI] over seeds."""
    out = []
    for variant, by_budget in series(tr).items():
        for b, row in by_budget.items():
            cells = [f"`{variant}`", str(b), f"`{row}`", str(len(tr.seed_values(row, 'CIDEr')))]
            cells += [fmt_ci(seed_mean(tr, row, q)) for q in QUANTITIES]
            out.append(cells)
    return out


def plot(tr: TableRuns, out_png) -> bool:
    """CIDEr and the likelihood-swap gap against epochs (log2 axis), mean and seed-level 95% CI per variant."""
    rows = series(tr)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(QUANTITIES), figsize=(5 * len(QUANTITIES), 3.6))
    for ax, quantity in zip(axes, QUANTITIES):
        for k, (variant, by_budget) in enumerate(rows.items()):
            budgets = list(by_budget)
            means = [seed_mean(tr, by_budget[b], quantity) for b in budgets]
            y = np.array([m.estimate for m in means])
            low = np.array([m.low if m.decided else m.estimate for m in means])
            high = np.array([m.high if m.decided else m.estimate for m in means])
            dodge = 2 ** (0.04 * (k - (len(rows) - 1) / 2))  # side by side, so the CIs do not hide each other
            ax.errorbar(np.array(budgets) * dodge, y, yerr=[y - low, high - y], marker="o", capsize=3, label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({b for r in rows.values() for b in r}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("training epochs")
        ax.set_ylabel(f"{COMPARED.get(quantity, quantity)} ({tr.table.data.eval_split} split)")
        ax.set_title(f"{COMPARED.get(quantity, quantity)}: mean of seeds, 95% CI")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    atomic_write(out_png, lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
    return True
