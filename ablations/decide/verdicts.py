"""Verdicts: one rule type for every expectation (expectations.py: a quantity, what it is compared with and a
direction), each check a seed-level test, decided together with the other tests of its family so that the
family's error rate stays at 5 %.

A test is an interval over seeds against a bound (stats.py); an equivalence check is two tests, its TOST
interval inside ±margin ("equivalent") and its 95% CI away from 0 ("differs"). Its family (the expectations table, a
comparison table, the budget section, a section's claims) is Holm-adjusted, and a test is decided only
when its adjusted p is below 0.05. Two guards keep a test from deciding at all: the variant's seeds
disagree in kind (some collapsed to empty captions, some not: a mean over such seeds describes no
training run), or the two sides' runs come from different code versions that no `ablate verify`
showed to give the same results (a confound).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from ablations.report.collect import TableRuns
from ablations.decide.expectations import EVERY_WORKING, NAMED, Check, Expectation, label
from ablations.report.formatting import fmt, fmt_ci, fmt_p, fmt_up
from ablations.decide import power
from ablations.decide.stats import (Comparison, Interval, compare, decide, holm, image_floor, mean_std, one_sample, rate_floor,
                    tost, tost_one_sample, welch)

COMPARED = {q: label(q) for q in ("CIDEr", "nll_gap", "slot_relation")}  # per-image quantities with comparison tables
RATES = {"swap_rate", "empty_rate", "eos_first_rate"}  # shares of images: CIs clipped to [0, 1], floored
COLLAPSED = 0.5  # a run with at least this share of empty captions (or EOS first) has collapsed


def summarize(table_runs: TableRuns) -> pd.DataFrame:
    """Mean and std over seeds of every per-run number, one row per variant (table order)."""
    if table_runs.runs.empty:
        return pd.DataFrame()
    cols = [c for c in table_runs.runs.columns
            if c not in ("variant", "seed", "epochs") and pd.api.types.is_numeric_dtype(table_runs.runs[c])]
    return mean_std(table_runs.runs, cols).reindex(table_runs.order)


def comparisons(table_runs: TableRuns, metric: str) -> dict[str, Comparison]:
    """Every row of the table against the reference on one per-image quantity, computed once per table;
    budget rows (table_runs.sweep_order) are compared at their own budget in budgets.py."""
    if metric in table_runs.comparisons:
        return table_runs.comparisons[metric]
    ref, out = table_runs.table.reference, {}
    for v in table_runs.order if ref in table_runs.order else []:
        if v != ref and not table_runs.matrix(v, metric).empty and not table_runs.matrix(ref, metric).empty:
            out[v] = compare(table_runs.matrix(v, metric), table_runs.matrix(ref, metric), (v, ref), metric)
    table_runs.comparisons[metric] = out
    return out


# ---- guards
def seeds_disagree(table_runs: TableRuns, v: str) -> bool:
    """Some of the variant's runs collapsed (>= 50 % empty captions or EOS first) and some did not."""
    if table_runs.runs.empty or "empty_rate" not in table_runs.runs:
        return False
    rows = table_runs.runs[table_runs.runs["variant"] == v]
    kind = (rows["empty_rate"] >= COLLAPSED) | (rows.get("eos_first_rate", rows["empty_rate"]) >= COLLAPSED)
    return bool(kind.any() and not kind.all())


def verified_fingerprints(table_runs: TableRuns) -> set[str]:
    """Code versions that a stored `ablate verify` check reproduced a run exactly across."""
    return {fp for c in table_runs.verification if c.get("exact") for fp in c.get("fingerprints", [])}


def confound(table_runs: TableRuns, *variants: str) -> str | None:
    """'confounded (...)' when the variants' runs come from more than one code fingerprint and no stored
    `ablate verify` check reproduced a run exactly across a code change; else None."""
    if "fingerprint" not in table_runs.runs:
        return None
    prints = set(table_runs.runs[table_runs.runs["variant"].isin(variants)]["fingerprint"])
    if len(prints) <= 1:
        return None
    if prints <= verified_fingerprints(table_runs):  # a verify check reproduced runs exactly across each of these code versions
        return None
    return f"confounded: these runs come from {len(prints)} code versions"


def guard(table_runs: TableRuns, *variants: str) -> str | None:
    """Why a test of ``variants[0]`` (against the others) must not decide. A split in kind belongs to the variant
    that shows it: the test's own variant says 'seeds disagree', a partner's split says so of the partner
    ('partner's seeds disagree: ...'), so a variant whose own runs agree is never labelled as if they did not."""
    for k, v in enumerate(variants):
        if seeds_disagree(table_runs, v):
            return f"{'seeds' if k == 0 else PARTNER} disagree: some {v} runs collapsed and some did not"
    return confound(table_runs, *variants)


PARTNER = "partner's seeds"  # a guard text's start when the compared variant's seeds split, not the test's own


def guard_word(text: str) -> str:
    """The decision a guard gives a test: 'seeds disagree', "partner's seeds disagree" or 'confounded'."""
    return "seeds disagree" if text.startswith("seeds") else f"{PARTNER} disagree" if text.startswith(PARTNER) \
        else "confounded"


# ---- machines: what changes the numerics without changing the code
def verified_numerics(table_runs: TableRuns) -> set[str]:
    """Numerics setups (collect.numerics_label) that a stored `ablate verify` check found within the seed spread of
    each other: exact, or its largest difference at most one seed SD."""
    out = set()
    for c in table_runs.verification:
        largest = c.get("largest") or {}
        if c.get("exact") or (largest.get("seed_sds") is not None and largest["seed_sds"] <= 1.0):
            out.update(c.get("numerics", []))
    return out


def machine_confound(table_runs: TableRuns, *variants: str) -> str | None:
    """A named confound (it does not block the decision) when the compared variants' runs come from more than one
    numerics setup (CPU instruction sets, torch version, threads, device, precision: float results differ with
    each) and no stored verify check found them within the seed spread: 'machines differ: full on AVX2 ..., meanpool
    on AVX-512 ...'. Across setups the same seed gives other bits, not another distribution (a shapes retrain on
    another CPU gave the same verdict on every row, issue 50), so it is named, not treated as a code change."""
    if "numerics" not in table_runs.runs or len(variants) < 2:
        return None
    rows = table_runs.runs[table_runs.runs["variant"].isin(variants)]
    setups = set(rows["numerics"])
    if len(setups) <= 1 or setups <= verified_numerics(table_runs):
        return None
    short = _what_differs(sorted(setups))
    where = "; ".join(f"{v} on {_setups(g['numerics'], short)}" for v, g in rows.groupby("variant", sort=False))
    return f"machines differ, a named confound ({where}; no verify showed it within the seed spread)"


def _setups(numerics: pd.Series, short: dict[str, str]) -> str:
    counts = numerics.value_counts(sort=False)
    return " and ".join(f"{short[s]} ({n} runs)" if len(counts) > 1 else short[s] for s, n in counts.items())


def _what_differs(labels: list[str]) -> dict[str, str]:
    """Each numerics label cut to the parts that differ between ``labels`` ('AVX2' vs 'AVX-512')."""
    parts = [label.split(", ") for label in labels]
    keep = [k for k in range(max(map(len, parts))) if len({tuple(p[k:k + 1]) for p in parts}) > 1]
    return {label: ", ".join(p[k] for k in keep if k < len(p)) or label for label, p in zip(labels, parts)}


# ---- tests and their families
@dataclass
class Test:
    """One seed-level interval against a bound; decided with its family (decide_family)."""

    label: str
    interval: Interval
    bound: float
    side: str  # 'below' / 'above' the bound is what the claim says; 'equivalent' (within bound ± margin, a TOST
    # interval) and 'differs' (a 95% CI away from the bound) are the two tests of an equivalence check
    guard: str | None = None  # why it must not decide at all
    note: str = ""  # what else to say about the numbers
    planning: str = ""  # what the seeds could detect: said only when the test stays inconclusive
    p_adjusted: float = float("nan")
    decision: str = "inconclusive"
    margin: float | None = None  # side 'equivalent' only
    group: object = None  # the equivalence check it belongs to: its two tests count once in Holm (stats.holm)
    caveat: str | None = None  # a confound named beside the numbers (machines differ): it does not block the decision
    planner: Callable[[], power.Plan] | None = field(default=None, repr=False, compare=False)  # see plan()
    seeds_next: int | None = None  # an equivalence: the seeds a side that would show it if Δ were 0

    def plan(self) -> power.Plan | None:
        """What more seeds would do for this test (power.plan), computed when first asked for: only undecided
        tests say it."""
        if self.planner is not None and not hasattr(self, "_plan"):
            self._plan = self.planner()
        return getattr(self, "_plan", None)

    def planning_text(self) -> str:
        if self.planning:
            return self.planning
        p = self.plan()
        return undecided_note(p, self.interval.estimate - self.bound) if p is not None else ""

    def text(self) -> str:
        caveat = f"; {self.caveat}" if self.caveat else ""
        if self.guard:
            return f"{self.label} {fmt_ci(self.interval)} (not decided: {self.guard}{caveat})"
        if self.side == "equivalent":
            need = f"90% CI; equivalent if inside {_around(self.bound, self.margin)}: TOST"
        elif self.side == "differs":
            need = f"95% CI; differs if it excludes {self.bound:g}:"
        else:
            need = f"need it {self.side} {self.bound:g};"
        return (f"{self.label} {fmt_ci(self.interval)} ({need} Holm p = {fmt_p(self.p_adjusted)})" + self.note + caveat
                + (self.planning_text() if self.decision == "inconclusive" else ""))


def _around(center: float, margin: float | None) -> str:
    return f"±{margin:g}" if center == 0 else f"{center:g} ± {margin:g}"


def decide_family(tests: list[Test]) -> list[Test]:
    """Holm over the family's tests (guarded ones decide nothing and are left out), then each decision."""
    live = [t for t in tests if not t.guard]
    groups = [k if t.group is None else t.group for k, t in enumerate(live)]
    for t, p in zip(live, holm([t.interval.p for t in live], groups)):
        t.p_adjusted = p
        t.decision = decide(t.interval, t.bound, t.side, p, t.margin)
    for t in tests:
        if t.guard:
            t.decision = guard_word(t.guard)
    return tests


def combine(decisions: list[str]) -> str:
    if "not held" in decisions:
        return "not held"
    if decisions and all(d == "held" for d in decisions):
        return "held"
    for special in ("seeds disagree", f"{PARTNER} disagree", "confounded"):
        if special in decisions:
            return special
    return "inconclusive"


def equivalence_decision(tests: list[Test]) -> str:
    """The verdict of an equivalence check from its two decided tests (equivalence_tests): 'equivalent' when the
    TOST test decides (also when the difference, smaller than the margin, is decided too), 'differs' when only the
    difference test decides, else 'inconclusive' (or the guard's word)."""
    same, differs = tests
    if same.guard:
        return same.decision
    return "equivalent" if same.decision == "held" else "differs" if differs.decision == "held" else "inconclusive"


def equivalence_tests(x: np.ndarray, y: np.ndarray | float, margin: float, label: str, floor_x: float = 0.0,
                      floor_y: float = 0.0, guard: str | None = None) -> list[Test]:
    """The two tests of an equivalence check on per-seed values ``x`` against ``y`` (per-seed values of the other
    variant, or a number): TOST within ±margin and the two-sided difference, both members of the family. The
    report and rule_rates.equivalence_rates (the simulated error rates) both build them here. The two count once
    in the family's Holm adjustment (stats.holm, groups): their null hypotheses exclude each other."""
    if isinstance(y, float):
        same = tost_one_sample(x, y, margin, floor_x)
        differs = one_sample(x, y, floor=floor_x)
        center = y
    else:
        same, differs, center = tost(x, y, margin, floor_x, floor_y), welch(x, y, floor_x, floor_y), 0.0
    pair = ("equivalence", next(_PAIRS))  # Δ = 0 and |Δ| >= margin cannot both be true: one slot in Holm
    return [Test(label, same, center, "equivalent", guard, margin=margin, group=pair),
            Test(label, differs, center, "differs", guard, group=pair)]


_PAIRS = itertools.count()


def seed_interval(table_runs: TableRuns, v: str, quantity: str, bound: float = 0.0) -> Interval:
    """The one seed-level 95% CI of a variant's quantity that every section quotes and every one-sample test uses
    (issue 50 found the NLL gap with two CIs in one report): one value per run (its number in metrics.json, or its
    mean over images where only that is stored), the seed SD floored by the SE a run's number has from its images
    where that number is the mean over its images, by the binomial SE for a share, and clipped to [0, 1] for a
    share."""
    values, floor = run_values(table_runs, v, quantity)
    return one_sample(values, bound, limits=(0.0, 1.0) if quantity in RATES else None, floor=floor)


def run_values(table_runs: TableRuns, v: str, quantity: str) -> tuple[np.ndarray, float]:
    """Each run's number for ``quantity`` and the floor under their seed SD (see seed_interval)."""
    rows = table_runs.runs[table_runs.runs["variant"] == v] if len(table_runs.runs) else pd.DataFrame()
    m = table_runs.matrix(v, quantity)
    means = m.mean(axis=0).to_numpy() if not m.empty else np.array([])
    if quantity in rows and rows[quantity].notna().any():
        stored = rows.dropna(subset=[quantity])
        values = stored[quantity].to_numpy(dtype=float)
        if quantity in RATES:
            return values, rate_floor(values, stored["images"].to_numpy(dtype=float))
        image_mean = len(means) == len(values) and np.allclose(np.sort(means), np.sort(values), rtol=1e-6, atol=1e-9)
        return values, image_floor(m) if image_mean else 0.0  # (corpus BLEU is no mean over images: no floor)
    return means, image_floor(m) if not m.empty else 0.0


def rate_test(table_runs: TableRuns, v: str, column: str, bound: float, side: str, label: str) -> Test:
    """A run-level number (swap, empty, EOS-first rate; a corpus metric) against a bound (seed_interval's CI)."""
    values, floor = run_values(table_runs, v, column)
    i = seed_interval(table_runs, v, column, bound)
    return Test(label, i, bound, side, guard(table_runs, v), planner=_one_sample_planner(i, values, floor, bound))


def mean_test(table_runs: TableRuns, v: str, column: str, bound: float, side: str, label: str) -> Test:
    """A per-image quantity's run means against a bound, floored by the image-level SE of a run's mean."""
    return rate_test(table_runs, v, column, bound, side, label)


def _one_sample_planner(i: Interval, values: np.ndarray, floor: float, bound: float) -> Callable[[], power.Plan]:
    """A one-sample test's planning numbers: its mean − bound as the difference, a number on the other side."""
    arms = power.Arms(_spread(values, floor), 0.0, floor, 0.0)
    return lambda: power.plan(i.estimate - bound, i.low - bound, i.high - bound, i.n, i.n, arms)


def undecided_note(p: power.Plan, estimate: float) -> str:
    """What the seeds could detect, and the seeds a decision would take: at the estimate and at the ends of its
    95% CI (the uncertainty of Δ), from the rule's simulated power (power.py)."""
    parts = []
    if not math.isnan(p.detectable):
        parts.append(f"these seeds detect |Δ| ≥ {fmt_up(p.detectable)} with 80% power")
    if p.at_estimate is not None:
        ends = (f"{power.seeds_text(p.at_far_end)} if the true Δ were at the CI's far end ({fmt(p.far_end)}), "
                + (f"{power.seeds_text(p.at_near_end)} at its near end ({fmt(p.near_end)})" if p.near_end is not None
                   else "and no number if it were near 0, which the CI includes"))
        parts.append(f"deciding Δ = {fmt(estimate)} would take {power.seeds_text(p.at_estimate)} seeds per variant "
                     f"({ends})")
    if not parts:
        return ""
    return "; " + "; ".join(parts) + " (simulated power of this rule alone, at the seed SDs it uses)"


def next_step(t: Test) -> str | None:
    """What more seeds would do for one undecided test, in a clause with its numbers (the report's "What next"):
    the seeds a side that decide it at its estimate with 80% simulated power, and at the ends of its 95% CI."""
    if t.guard or t.decision != "inconclusive" or t.side == "differs":
        return None
    if t.side == "equivalent":
        return None if t.seeds_next is None else (
            f"{t.label}: {power.seeds_text(t.seeds_next)} seeds a side would show equivalence within "
            f"{_around(t.bound, t.margin)} if the true Δ were 0")
    p = t.plan()
    if p is None or p.at_estimate is None:
        return None
    difference = t.label.startswith("Δ")
    what = f"Δ = {fmt(t.interval.estimate)}" if difference else f"{t.label} {fmt(t.interval.estimate)} against {t.bound:g}"
    value = "difference" if difference else "value"  # a one-sample test's ends are values of the quantity
    shift = 0.0 if difference else t.bound
    near = ("none if it is near " + (f"{t.bound:g}" if not difference else "0") + ", which the CI includes"
            if p.near_end is None else f"{power.seeds_text(p.at_near_end)} at its near end ({fmt(p.near_end + shift)})")
    return (f"{t.label}: {power.seeds_text(p.at_estimate)} seeds a side would decide {what} "
            f"({power.seeds_text(p.at_far_end)} if the true {value} were at the CI's far end, "
            f"{fmt(p.far_end + shift)}; {near})")


def plan_cells(p: power.Plan | None) -> tuple[str, str]:
    """The comparison table's two planning cells: |Δ| detectable now, and seeds a side at Δ [CI's far end, near
    end] ('∞': the CI reaches 0, where no number of seeds decides)."""
    if p is None:
        return "–", "–"
    near = power.seeds_text(p.at_near_end) if p.near_end is not None else "∞"
    seeds = "–" if p.at_estimate is None else f"{power.seeds_text(p.at_estimate)} [{power.seeds_text(p.at_far_end)}, {near}]"
    return fmt_up(p.detectable), seeds


def comparison_test(table_runs: TableRuns, v: str, metric: str, side: str = "below", other: str | None = None) -> Test | None:
    """v − reference (or v − other) at seed level on a per-image quantity."""
    if other is None:
        c = comparisons(table_runs, metric).get(v)
        ref = table_runs.table.reference
    else:
        ref = other
        c = compare(table_runs.matrix(v, metric), table_runs.matrix(other, metric), (v, other), metric)
    if c is None or math.isnan(c.seed_level.estimate):
        return None
    return Test(f"Δ{label(metric)} {v} − {ref}", c.seed_level, 0.0, side, guard(table_runs, v, ref),
                caveat=machine_confound(table_runs, v, ref), planner=lambda: power.comparison_plan(c))


# ---- one rule for every expectation: each check becomes seed-level tests
def per_image(table_runs: TableRuns, quantity: str) -> bool:
    """Whether the runs store ``quantity`` per image (compared as each run's mean, floored by its image-level SE);
    otherwise it is one number per run (floored by its binomial SE when it is a rate)."""
    return any(quantity in f for frames in table_runs.per_image.values() for f in frames.values())


def seed_values(table_runs: TableRuns, v: str, quantity: str) -> tuple[np.ndarray, float]:
    """One value per run of ``v`` and the least spread a run's value has (image-level or binomial SE)."""
    if per_image(table_runs, quantity):
        m = table_runs.matrix(v, quantity)
        return m.mean(axis=0).to_numpy(), image_floor(m) if not m.empty else 0.0
    rows = table_runs.runs[table_runs.runs["variant"] == v]
    values = rows[quantity].to_numpy(dtype=float) if quantity in rows else np.array([])
    floor = rate_floor(values, rows["images"].to_numpy(dtype=float)) if quantity in RATES and len(values) else 0.0
    return values, floor


def run_level_test(table_runs: TableRuns, v: str, quantity: str, side: str, other: str) -> Test | None:
    """v − other on a quantity measured once per run (e.g. swap rate): Welch over seeds, binomial floors."""
    (x, fx), (y, fy) = seed_values(table_runs, v, quantity), seed_values(table_runs, other, quantity)
    if not len(x) or not len(y):
        return None
    i = welch(x, y, fx, fy)
    arms = power.Arms(_spread(x, fx), _spread(y, fy), fx, fy)
    return Test(f"Δ{label(quantity)} {v} − {other}", i, 0.0, side, guard(table_runs, v, other),
                caveat=machine_confound(table_runs, v, other),
                planner=lambda: power.plan(i.estimate, i.low, i.high, len(x), len(y), arms))


def check_tests(table_runs: TableRuns, v: str, c: Check) -> list[Test]:
    """The seed-level tests of one check of variant ``v`` (none when there is nothing to compare with)."""
    ref = table_runs.table.reference
    if c.direction == "equivalent":
        x, fx = seed_values(table_runs, v, c.quantity)
        name = c.vs if isinstance(c.vs, str) else ref if c.vs is None else None
        if not len(x) or (name is not None and name not in table_runs.order):
            return []
        y, fy = seed_values(table_runs, name, c.quantity) if name is not None else (float(c.vs), 0.0)
        if not isinstance(y, float) and not len(y):
            return []
        title = f"Δ{label(c.quantity)} {v} − {name}" if name is not None else label(c.quantity)
        tests = equivalence_tests(x, y, c.margin, title, fx, fy, guard(table_runs, v, *([name] if name else [])))
        tests[0].caveat = machine_confound(table_runs, v, name) if name else None  # said once for the check
        # against a number: no spread on that side, TOST on the one-sample t (power.equivalence_power)
        arms = power.Arms(_spread(x, fx), 0.0 if name is None else _spread(y, fy), fx, 0.0 if name is None else fy)
        n = power.seeds_for_equivalence(c.margin, arms)
        if n is not None:
            tests[0].seeds_next = n
            tests[0].planning = (f"; showing equivalence within {_around(tests[0].bound, c.margin)} if the true Δ were 0 "
                                 f"would take {power.seeds_text(n)} seeds per variant (simulated power 80% of this "
                                 "rule alone, at the seed SDs the test uses)")
        return tests
    if c.against_number:
        t = (mean_test if per_image(table_runs, c.quantity) else rate_test)(
            table_runs, v, c.quantity, c.vs, c.direction, label(c.quantity))
        if c.quote:
            t.note = f"; {label(c.quote)} {fmt(float(table_runs.seed_values(v, c.quote).mean()))}"
        return [t]
    if c.vs == EVERY_WORKING:  # the floor: each other variant none of whose runs collapsed, the reference too
        summary = summarize(table_runs)  # (a partner with some collapsed runs would lend the floor its guard)
        others = [o for o in table_runs.order if o != v and summary.loc[o, "empty_rate"] < COLLAPSED
                  and not seeds_disagree(table_runs, o)]
    else:
        others = [ref if c.vs is None else c.vs]
    tests = []
    for o in [o for o in others if o in table_runs.order]:
        if per_image(table_runs, c.quantity):  # against the reference: the comparison computed once per table
            t = comparison_test(table_runs, v, c.quantity, c.direction, other=None if c.vs is None else o)
        else:
            t = run_level_test(table_runs, v, c.quantity, c.direction, o)
        if t:
            tests.append(t)
    return tests


def _spread(values: np.ndarray, floor: float) -> float:
    """The seed SD a test uses: the runs' own, never below their floor."""
    return max(float(np.std(values, ddof=1)), floor) if len(values) > 1 else float("nan")


def expectation_tests(table_runs: TableRuns, v: str, e: Expectation) -> list[Test]:
    """Every test of an expectation, its checks in order; all must hold."""
    return [t for c in e.checks for t in check_tests(table_runs, v, c)]


def _named_rule(name: str):
    return lambda table_runs, v: expectation_tests(table_runs, v, NAMED[name])


# The shipped names as functions of (runs, variant) -> tests, as before the one rule type (tests call them).
RULES = {name: _named_rule(name) for name in NAMED}
rule_image_dependent, rule_worse_than_reference, rule_loses_relations = (RULES[n] for n in (
    "image_dependent", "worse_than_reference", "loses_relations"))
rule_uses_image_less, rule_floor, rule_collapsed = (RULES[n] for n in ("uses_image_less", "floor", "collapsed"))


@dataclass
class Verdict:
    variant: str
    expectation: str
    expected: str
    verdict: str  # held / not held / inconclusive / seeds disagree / confounded / n/a; equivalent / differs
    numbers: str
    tests: list[Test] = field(default_factory=list)
    rule: Expectation | None = None  # the expectation it decides (None: a claim of a report section)
    comparison: Comparison | None = None  # the one seed-level difference behind it, where it has one (README cell)


def _verdict(variant: str, expectation: str, expected: str, tests: list[Test], rule: Expectation | None = None,
             comparison: Comparison | None = None) -> Verdict:
    if not tests:
        return Verdict(variant, expectation, expected, "n/a", "nothing to compare with", rule=rule)
    word = equivalence_decision(tests) if rule is not None and rule.equivalence else combine([t.decision for t in tests])
    if word == "differs":  # how many seeds equivalence would take no longer matters
        tests[0].planning = ""
    return Verdict(variant, expectation, expected, word, "; ".join(t.text() for t in tests), tests, rule, comparison)


def headline(table_runs: TableRuns, v: str, e: Expectation) -> Comparison | None:
    """The expectation's one difference with a variant on a per-image quantity, if it has exactly one."""
    if len(e.checks) != 1 or e.checks[0].against_number or e.checks[0].vs == EVERY_WORKING:
        return None
    c = e.checks[0]
    other = table_runs.table.reference if c.vs is None else c.vs
    if v not in table_runs.order or other not in table_runs.order or not per_image(table_runs, c.quantity):
        return None
    if other == table_runs.table.reference:
        return comparisons(table_runs, c.quantity).get(v)
    return compare(table_runs.matrix(v, c.quantity), table_runs.matrix(other, c.quantity), (v, other), c.quantity)


def expectations(table_runs: TableRuns) -> list[Verdict]:
    """Every expectation of the table's rows; all their tests form one family."""
    planned, family = [], []
    for name, v in table_runs.table.variants.items():
        if v.is_budget_row:  # compared at their own budget in the budget section
            continue
        for e in v.expectations or [None]:
            tests = expectation_tests(table_runs, name, e) if e is not None and name in table_runs.order else []
            planned.append((name, e, v.expected, tests))
            family += tests
    decide_family(family)
    out = []
    for name, e, expected, tests in planned:
        if e is None:
            out.append(Verdict(name, "none", expected, "n/a", "no expectation checked"))
        elif name not in table_runs.order:
            out.append(Verdict(name, e.name, expected, "n/a", "no finished run", rule=e))
        else:
            out.append(_verdict(name, e.name, expected, tests, e, headline(table_runs, name, e)))
    return out


def family_size(verdicts: list[Verdict]) -> int:
    return sum(1 for v in verdicts for t in v.tests if not t.guard)


# ---- the comparison tables: one family per compared quantity
def comparison_rows(table_runs: TableRuns) -> dict[str, list[dict]]:
    out = {}
    for metric in COMPARED:
        comps = comparisons(table_runs, metric)
        if not comps:
            continue
        triples = [(v, c, comparison_test(table_runs, v, metric)) for v, c in comps.items()]
        triples = [x for x in triples if x[2] is not None]  # no estimate (e.g. no two-object image): no row
        decide_family([t for _, _, t in triples])
        rows = []
        for v, c, t in triples:
            i = c.image
            image_differs = not (np.isnan(i["ci_low"]) or i["ci_low"] <= 0 <= i["ci_high"])
            decided = t.decision in ("held", "not held")
            rows.append({"variant": v, "comparison": c, "test": t, "decided": decided,
                         "image_only": image_differs and not decided})
        out[metric] = rows
    return out


# ---- inside the model: claims about the reference, one family per section
def _more_than(table_runs: TableRuns, column: str, other: str, label: str) -> Verdict:
    ref = table_runs.table.reference
    t = comparison_test(table_runs, ref, column, "above", other=other)
    return Verdict(ref, column, f"{label} than {other}", "n/a", "", [t] if t else [])


def _decided(verdicts: list[Verdict]) -> list[Verdict]:
    decide_family([t for v in verdicts for t in v.tests])
    return [_verdict(v.variant, v.expectation, v.expected, v.tests) for v in verdicts]


def variants_where(table_runs: TableRuns, section: str, key: str, value) -> list[str]:
    """Variants whose stored config has ``section.key == value`` (not their names: rows may be renamed)."""
    return [v for v in table_runs.order if v != table_runs.table.reference and table_runs.configs[v].get(section, {}).get(key) == value]


def grounding_verdicts(table_runs: TableRuns) -> list[Verdict]:
    ref = table_runs.table.reference
    trained = table_runs.configs.get(ref, {}).get("model", {}).get("train_qformer", False)
    if ref not in table_runs.order or table_runs.matrix(ref, "grounding_excess").empty or not trained:
        return []
    out = [Verdict(ref, "grounding_excess", "its queries put more attention on object pixels than chance", "n/a", "",
                   [mean_test(table_runs, ref, "grounding_excess", 0.0, "above", "attention mass on objects − chance")])]
    for v in variants_where(table_runs, "model", "train_qformer", False):
        if not table_runs.matrix(v, "grounding_excess").empty:
            out.append(_more_than(table_runs, "grounding_excess", v, "its queries are more on the objects"))
    return _decided(out)


def reliance_verdicts(table_runs: TableRuns) -> list[Verdict]:
    ref = table_runs.table.reference
    if ref not in table_runs.order or table_runs.matrix(ref, "visual_reliance").empty or not table_runs.configs[ref]["model"]["lora_rank"]:
        return []
    return _decided([_more_than(table_runs, "visual_reliance", v, "the LM reads the visual tokens more (LoRA raises it)")
                     for v in variants_where(table_runs, "model", "lora_rank", 0) if not table_runs.matrix(v, "visual_reliance").empty])


def plan_swap(table_runs: TableRuns) -> Test:
    """The original plan's check that changing the image changes the caption (a family of one)."""
    return decide_family([rate_test(table_runs, table_runs.table.reference, "swap_rate", 0.9, "above", "swap rate")])[0]


def target_test(table_runs: TableRuns, key: str, goal: float) -> Test:
    """The reference's mean over seeds against a target: met only when its seed-level 95% CI lies above it,
    not met when it lies below, else undecided (a target is about these runs, so no guard applies)."""
    t = rate_test(table_runs, table_runs.table.reference, key, goal, "above", f"{table_runs.table.reference} {key}")
    t.guard, t.decision = None, decide(t.interval, goal, "above")
    return t

