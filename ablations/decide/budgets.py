"""Do the ablation verdicts survive more training? Seed-level comparisons at every training budget.

A table's ``[[sweep]]`` rows over ``train.epochs`` retrain variants at other budgets (each its own run
with its own schedule). For every ablation that has a row at a budget where the reference has one, the
difference ablation - reference is tested over seeds (Welch, as everywhere else) at that budget, and
the sequence of per-budget verdicts is named: it holds at every budget, flips, appears only late,
fades, or stays undecided. A verdict drawn at one small budget means little if it flips later.
"""
from __future__ import annotations

from dataclasses import dataclass


from ablations.report.collect import TableRuns
import numpy as np

from ablations.decide.stats import Interval, decide, holm, image_floor, welch
from ablations.decide.verdicts import guard, machine_confound, seed_interval

# The quantities plotted and tested at every budget, and the direction each ablation is expected to
# move them in (from the variant's expectations; other pairs are shown without an expected direction).
QUANTITIES = {"CIDEr": "worse_than_reference", "nll_gap": "uses_image_less"}


def series(table_runs: TableRuns) -> dict[str, dict[int, str]]:
    """variant -> {epochs: row name}, for every variant with budget rows (its own row included),
    keeping only rows with at least one finished run; epochs as stored with the runs. Empty when the
    table has no budget sweep."""
    table = table_runs.table
    bases = {v.sweep_of for v in table.variants.values() if v.is_budget_row}
    out = {}
    for base in [b for b in table.variants if b in bases]:
        names = [base] + [v.name for v in table.variants.values() if v.sweep_of == base and v.is_budget_row]
        done = [n for n in names if n in table_runs.order + table_runs.sweep_order]
        epochs = {n: table_runs.configs.get(n, {}).get("train", {}).get("epochs", table.variants[n].train.epochs) for n in done}
        out[base] = {epochs[n]: n for n in sorted(done, key=epochs.get)}
    return out


def seed_mean(table_runs: TableRuns, row: str, quantity: str) -> Interval:
    """Mean over seeds of the run-level value, with its seed-level 95% CI (the plotted points): the one CI of the
    quantity that every section quotes (verdicts.seed_interval)."""
    return seed_interval(table_runs, row, quantity)


def plotted_points(rows: list[dict]) -> dict[str, dict[str, dict[int, Interval]]]:
    """quantity -> variant -> {epochs: mean over seeds with its CI}: what the budget figure draws (from budget_rows)."""
    out: dict = {q: {} for q in QUANTITIES} if rows else {}
    for r in rows:
        for q in QUANTITIES:
            out[q].setdefault(r["variant"], {})[r["epochs"]] = r[q]
    return out


@dataclass
class BudgetVerdict:
    """One ablation on one quantity across budgets: per-budget seed-level differences and their pattern."""

    variant: str
    reference: str
    quantity: str
    expected: bool  # the variant's expectation names this quantity (QUANTITIES)
    budgets: list[int]
    differences: list[Interval]  # variant - reference at each budget
    directions: list[str]  # 'lower' / 'higher' / 'undecided' at each budget
    pattern: str
    missing: list[int]  # budgets both have but one side lacks the quantity at
    machines: dict[int, str]  # budget -> machines-differ confound (verdicts.machine_confound), named, not blocking


def direction(i: Interval, p_adjusted: float) -> str:
    """'lower' / 'higher' when the family-adjusted test decides (Holm p < 0.05), else 'undecided'."""
    return {"held": "lower", "not held": "higher"}.get(decide(i, 0.0, "below", p_adjusted), "undecided")


def pattern(directions: list[str], wanted: str | None) -> str:
    """Name the sequence of per-budget outcomes (budgets ascending). ``wanted`` is the expected direction
    ('lower') or None when the pair carries no expectation (then the first decided direction is followed)."""
    decided = [d for d in directions if d in ("lower", "higher")]
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


def adjusted_p(p) -> np.ndarray:
    """The section's family: Holm over every cell that could decide (p: cells, or tables x cells in the
    simulation of rule_rates.budget_family, which calls this very function)."""
    return np.asarray(holm(np.asarray(p, float)), float)


def ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def verdicts(table_runs: TableRuns) -> list[BudgetVerdict]:
    """Every ablation with budget rows against the reference's row at the same budget, on each quantity.
    Every (ablation, quantity, budget) test of the section is one family (Holm), so a pattern such as
    "flips" rests on adjusted decisions. A budget where either side has no value is left out (and named)."""
    rows = series(table_runs)
    ref = table_runs.table.reference
    planned = []
    for variant, by_budget in rows.items() if ref in rows else []:
        if variant == ref:
            continue
        shared = [b for b in by_budget if b in rows[ref]]
        for quantity, expectation in QUANTITIES.items():
            diffs, guards = {}, {}
            for b in shared:
                mx, my = table_runs.matrix(by_budget[b], quantity), table_runs.matrix(rows[ref][b], quantity)
                if not (mx.empty or my.empty):
                    diffs[b] = welch(mx.mean(axis=0).to_numpy(), my.mean(axis=0).to_numpy(), image_floor(mx),
                                     image_floor(my))
                    guards[b] = guard(table_runs, by_budget[b], rows[ref][b])  # seeds disagree / confounded
            if diffs:
                planned.append((variant, quantity, expectation in table_runs.table.variants[variant].expect, diffs,
                                [b for b in shared if b not in diffs], guards, by_budget))
    # guarded cells decide nothing and stay out of the family, as in verdicts.decide_family
    adjusted = iter(adjusted_p([d.p for *_, diffs, _, guards, _ in planned for b, d in diffs.items() if not guards[b]]))
    out = []
    for variant, quantity, expected, diffs, missing, guards, by_budget in planned:
        dirs = [f"not decided ({guards[b].split(':')[0]})" if guards[b] else direction(d, next(adjusted))
                for b, d in diffs.items()]
        live = [d for d in dirs if not d.startswith("not decided")]  # the pattern of the budgets that could decide
        name = (pattern(live, "lower" if expected else None) if len(live) > 1
                else f"{live[0]} at the only budget compared" if live else "not decided at any budget")
        if len(live) < len(dirs):
            name = name.replace("every budget", "every budget that could decide")
            name += f"; {len(dirs) - len(live)} budget(s) {', '.join(sorted(set(dirs) - set(live)))}"
        machines = {b: c for b in diffs if (c := machine_confound(table_runs, by_budget[b], rows[ref][b]))}
        out.append(BudgetVerdict(variant, ref, quantity, expected, list(diffs), list(diffs.values()), dirs, name, missing,
                                 machines))
    return out


def family_size(verdicts: list[BudgetVerdict]) -> int:
    return sum(d in ("lower", "higher", "undecided") for v in verdicts for d in v.directions)


def budget_rows(table_runs: TableRuns) -> list[dict]:
    """Per variant and budget: its row, seeds, CIDEr and NLL gap as mean with seed-level 95% CI, train seconds."""
    t = table_runs.stage_seconds
    train_s = t.set_index("variant")["train"].groupby(level=0).mean() if not t.empty else {}
    out = []
    for variant, by_budget in series(table_runs).items():
        for b, row in by_budget.items():
            out.append({"variant": variant, "epochs": b, "row": row, "seeds": len(table_runs.seed_values(row, "CIDEr")),
                        **{q: seed_mean(table_runs, row, q) for q in QUANTITIES},
                        "train_seconds": float(train_s[row]) if row in train_s else None})
    return out
