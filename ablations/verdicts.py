"""Verdicts: one rule per expectation (tables.EXPECTATIONS), each a set of seed-level tests, decided
together with the other tests of its family so that the family's error rate stays at 5 %.

A test is an interval over seeds against a bound (stats.py). Its family (the expectations table, a
comparison table, the budget section, a section's claims) is Holm-adjusted, and a test is decided only
when its adjusted p is below 0.05. Two guards keep a test from deciding at all: the variant's seeds
disagree in kind (some collapsed to empty captions, some not: a mean over such seeds describes no
training run), or the two sides' runs come from different code versions that no `ablate verify`
showed to give the same results (a confound).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .collect import TableRuns
from .formatting import fmt, fmt_ci, fmt_p
from .stats import Comparison, Interval, compare, decide, holm, image_floor, mean_std, one_sample, rate_floor

COMPARED = {"CIDEr": "CIDEr", "nll_gap": "NLL gap", "slot_relation": "relation slot"}  # per-image quantities
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
    for v in variants:
        if seeds_disagree(table_runs, v):
            return f"seeds disagree: some {v} runs collapsed and some did not"
    return confound(table_runs, *variants)


# ---- tests and their families
@dataclass
class Test:
    """One seed-level interval against a bound; decided with its family (decide_family)."""

    label: str
    interval: Interval
    bound: float
    side: str  # 'below' / 'above' the bound is what the claim says
    guard: str | None = None  # why it must not decide at all
    note: str = ""  # what else to say about the numbers
    planning: str = ""  # what the seeds could detect: said only when the test stays inconclusive
    p_adjusted: float = float("nan")
    decision: str = "inconclusive"

    def text(self) -> str:
        if self.guard:
            return f"{self.label} {fmt_ci(self.interval)} (not decided: {self.guard})"
        return (f"{self.label} {fmt_ci(self.interval)} (need it {self.side} {self.bound:g}; Holm p = "
                f"{fmt_p(self.p_adjusted)})" + self.note + (self.planning if self.decision == "inconclusive" else ""))


def decide_family(tests: list[Test]) -> list[Test]:
    """Holm over the family's tests (guarded ones decide nothing and are left out), then each decision."""
    live = [t for t in tests if not t.guard]
    for t, p in zip(live, holm([t.interval.p for t in live])):
        t.p_adjusted = p
        t.decision = decide(t.interval, t.bound, t.side, p)
    for t in tests:
        if t.guard:
            t.decision = "seeds disagree" if t.guard.startswith("seeds") else "confounded"
    return tests


def combine(decisions: list[str]) -> str:
    if "not held" in decisions:
        return "not held"
    if decisions and all(d == "held" for d in decisions):
        return "held"
    for special in ("seeds disagree", "confounded"):
        if special in decisions:
            return special
    return "inconclusive"


def rate_test(table_runs: TableRuns, v: str, column: str, bound: float, side: str, label: str) -> Test:
    """A run-level share (swap, empty, EOS-first rate) against a bound, floored by its binomial SE."""
    rows = table_runs.runs[table_runs.runs["variant"] == v]
    values = rows[column].to_numpy(dtype=float) if column in rows else np.array([])
    floor = rate_floor(values, rows["images"].to_numpy(dtype=float)) if column in RATES and len(values) else 0.0
    i = one_sample(values, bound, limits=(0.0, 1.0) if column in RATES else None, floor=floor)
    return Test(label, i, bound, side, guard(table_runs, v))


def mean_test(table_runs: TableRuns, v: str, column: str, bound: float, side: str, label: str) -> Test:
    """A per-image quantity's run means against a bound, floored by the image-level SE of a run's mean."""
    m = table_runs.matrix(v, column)
    i = one_sample(m.mean(axis=0).to_numpy(), bound, floor=image_floor(m) if not m.empty else 0.0)
    return Test(label, i, bound, side, guard(table_runs, v))


def undecided_note(c: Comparison) -> str:
    """What the seeds could detect, and a range for the seeds a decision would take (an estimate)."""
    parts = []
    if not math.isnan(c.detectable):
        parts.append(f"these seeds detect |Δ| ≥ {fmt(c.detectable)} with 80% power")
    if c.seeds_range:
        low, high = c.seeds_range
        seeds = str(low) if low == high else f"{low}–{high}"
        parts.append(f"deciding Δ = {fmt(c.seed_level.estimate)} would take roughly {seeds} seeds per variant "
                     "(80% power, over the 80% CI of the seed SD)")
    return "; " + "; ".join(parts) if parts else ""


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
    return Test(f"Δ{COMPARED.get(metric, metric)} {v} − {ref}", c.seed_level, 0.0, side, guard(table_runs, v, ref),
                planning=undecided_note(c))


# ---- one rule per expectation: its tests
def rule_image_dependent(table_runs: TableRuns, v: str) -> list[Test]:
    return [rate_test(table_runs, v, "swap_rate", 0.9, "above", "swap rate"),
            mean_test(table_runs, v, "nll_gap", 0.0, "above", "NLL gap")]


def rule_worse_than_reference(table_runs: TableRuns, v: str) -> list[Test]:
    return [t for t in [comparison_test(table_runs, v, "CIDEr")] if t]


def rule_loses_relations(table_runs: TableRuns, v: str) -> list[Test]:
    return [t for t in [comparison_test(table_runs, v, "slot_relation")] if t]


def rule_uses_image_less(table_runs: TableRuns, v: str) -> list[Test]:
    return [t for t in [comparison_test(table_runs, v, "nll_gap")] if t]


def rule_floor(table_runs: TableRuns, v: str) -> list[Test]:
    summary = summarize(table_runs)
    others = [o for o in table_runs.order if o != v and summary.loc[o, "empty_rate"] < COLLAPSED]
    tests = [rate_test(table_runs, v, "swap_rate", 0.05, "below", "swap rate")]
    return tests + [t for t in (comparison_test(table_runs, v, "CIDEr", other=o) for o in others) if t]


def rule_collapsed(table_runs: TableRuns, v: str) -> list[Test]:
    t = rate_test(table_runs, v, "empty_rate", 0.9, "above", "empty-caption rate")
    t.note = f"; EOS first {fmt(float(table_runs.seed_values(v, 'eos_first_rate').mean()))}"
    return [t]


RULES = {"image_dependent": rule_image_dependent, "worse_than_reference": rule_worse_than_reference,
         "loses_relations": rule_loses_relations, "uses_image_less": rule_uses_image_less, "floor": rule_floor,
         "collapsed": rule_collapsed}


@dataclass
class Verdict:
    variant: str
    expectation: str
    expected: str
    verdict: str  # held / not held / inconclusive / seeds disagree / confounded / n/a
    numbers: str
    tests: list[Test] = field(default_factory=list)


def _verdict(variant: str, expectation: str, expected: str, tests: list[Test]) -> Verdict:
    if not tests:
        return Verdict(variant, expectation, expected, "n/a", "nothing to compare with")
    return Verdict(variant, expectation, expected, combine([t.decision for t in tests]),
                   "; ".join(t.text() for t in tests), tests)


def expectations(table_runs: TableRuns) -> list[Verdict]:
    """Every expectation of the table's rows; all their tests form one family."""
    planned, family = [], []
    for name, v in table_runs.table.variants.items():
        if v.is_budget_row:  # compared at their own budget in the budget section
            continue
        for e in v.expect or ["none"]:
            tests = RULES[e](table_runs, name) if e != "none" and name in table_runs.order else []
            planned.append((name, e, v.expected, tests))
            family += tests
    decide_family(family)
    out = []
    for name, e, expected, tests in planned:
        if e == "none":
            out.append(Verdict(name, e, expected, "n/a", "no expectation checked"))
        elif name not in table_runs.order:
            out.append(Verdict(name, e, expected, "n/a", "no finished run"))
        else:
            out.append(_verdict(name, e, expected, tests))
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
                         "image_only": image_differs and not decided, "undecided_note": undecided_note(c)})
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

