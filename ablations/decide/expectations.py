"""Expectations: what a table row claims about its runs, one rule type for every claim.

An expectation is one or more **checks**; a check names a ``quantity`` (a metric, slot score or probe column the
runs record), what it is compared with (``vs``: another variant, the table's reference when left out, or a
number) and a ``direction``: ``below``, ``above`` or ``equivalent`` (within ±``margin``, the smallest effect of
interest, whose reason the table must give in ``margin_reason``). verdicts.py turns each check into seed-level
tests and decides them with the table's family.

The six names the shipped tables use (``expect = "worse_than_reference"``) are instances of the same type,
defined here and nowhere else: their words, checks and the short claim the README's findings show. A table row
may also write its own, in TOML::

    expect = [{quantity = "CIDEr", vs = "full", direction = "below", words = "worse than full"}]
    expect = [{quantity = "CIDEr", direction = "equivalent", margin = 0.02, margin_reason = "...", words = "..."}]

No numpy, no pandas: tables.py parses these when it loads a table.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from vlm_core.errors import UserError

from ablations.measure.scoring import TARGET_METRICS

DIRECTIONS = ("below", "above", "equivalent")
EXPECT_KEYS = ("quantity", "vs", "direction", "margin", "margin_reason", "words")
# ``vs`` for the floor: every other variant of the table whose runs did not collapse (empty captions < 50 %).
EVERY_WORKING = "every working variant"

# The quantities a check may name: the corpus metrics, the shapes slot scores and the scalar probes a run records
# (metrics.json; per-image ones are compared image-averaged per run, the others per run). A new probe that a table
# should be able to name is added here (tests/test_expectations.py checks that every column of the committed
# evidence is).
METRIC_QUANTITIES = tuple(TARGET_METRICS)  # scoring.CAPTION_METRICS
SLOT_QUANTITIES = ("slot_colour", "slot_shape", "slot_size", "slot_count", "slot_relation")
PROBE_QUANTITIES = ("swap_rate", "swap_mutual_bleu4", "cider_swapped", "perceptual_score", "nll_own", "nll_swapped",
                    "nll_gap", "empty_rate", "eos_first_rate", "distinct_1", "distinct_2", "unique_share",
                    "mean_length", "top_caption_share", "p_eos_start", "p_eos_bos", "p_eos_after_eos",
                    "visual_reliance", "grounding_mass", "grounding_chance", "grounding_ratio", "grounding_excess",
                    "query_entropy", "query_entropy_max", "query_overlap")
PER_LAYER = re.compile(r"visual_reliance_layer_\d{1,3}")
QUANTITIES = METRIC_QUANTITIES + SLOT_QUANTITIES + PROBE_QUANTITIES
# How the report names a quantity in a test's label (the column name otherwise).
LABELS = {"CIDEr": "CIDEr", "nll_gap": "NLL gap", "slot_relation": "relation slot", "swap_rate": "swap rate",
          "empty_rate": "empty-caption rate", "eos_first_rate": "EOS first"}


def label(quantity: str) -> str:
    return LABELS.get(quantity, quantity)


def known_quantity(quantity: str) -> bool:
    return quantity in QUANTITIES or bool(PER_LAYER.fullmatch(quantity))


@dataclass(frozen=True)
class Check:
    """One comparison: ``quantity`` ``direction`` ``vs`` (a variant name, None for the table's reference,
    EVERY_WORKING, or a number), within ±``margin`` when the direction is ``equivalent``."""

    quantity: str
    vs: str | float | None
    direction: str
    margin: float | None = None
    quote: str = ""  # a run-level quantity quoted beside the test's numbers (decides nothing)

    @property
    def against_number(self) -> bool:
        return isinstance(self.vs, float)


@dataclass(frozen=True)
class Expectation:
    """What a row expects: all its checks must hold. ``name``: a shipped name, or a label made from the check;
    ``words``: what is expected, in words (the row's ``expected`` unless it gives one); ``claim``: the README's
    findings row ('{ref}' becomes the table's reference)."""

    name: str
    words: str
    checks: tuple[Check, ...]
    claim: str = ""
    margin_reason: str = ""
    custom: bool = field(default=False, compare=False)  # written in the table, not one of NAMED

    @property
    def equivalence(self) -> Check | None:
        return next((c for c in self.checks if c.direction == "equivalent"), None)

    @property
    def quantities(self) -> set[str]:
        return {c.quantity for c in self.checks}


# The six shipped expectations: the one place that says what each means and how it is checked.
NAMED: dict[str, Expectation] = {e.name: e for e in [
    Expectation("image_dependent",
                "captions depend on the image (generation-swap rate >= 0.9 and likelihood gap > 0, over seeds)",
                (Check("swap_rate", 0.9, "above"), Check("nll_gap", 0.0, "above")),
                claim="captions depend on the image"),
    Expectation("worse_than_reference",
                "CIDEr below the reference variant (seed-level 95% CI of the difference below 0)",
                (Check("CIDEr", None, "below"),), claim="CIDEr below {ref}"),
    Expectation("loses_relations", "relation slot below the reference variant (seed-level 95% CI below 0; shapes only)",
                (Check("slot_relation", None, "below"),), claim="relation slot below {ref}"),
    Expectation("uses_image_less",
                "uses the image less than the reference (likelihood-swap gap lower, seed-level 95% CI)",
                (Check("nll_gap", None, "below"),), claim="uses the image less than {ref} (NLL gap)"),
    # The floor is no single comparison: near-zero swap rate, and CIDEr below each variant that did not collapse.
    Expectation("floor",
                "language prior only: swap rate near 0 and CIDEr below every other working variant (seed-level CIs)",
                (Check("swap_rate", 0.05, "below"), Check("CIDEr", EVERY_WORKING, "below")),
                claim="the floor: language prior only"),
    Expectation("collapsed", "degenerate: >= 90% empty captions (over seeds)",
                (Check("empty_rate", 0.9, "above", quote="eos_first_rate"),), claim="collapses to empty captions"),
]}
# Kept for callers that list the names with their words.
EXPECTATIONS = {name: e.words for name, e in NAMED.items()}


def _short(x: float) -> str:
    return f"{x:g}"


def custom_name(c: Check) -> str:
    """A check's name in the report's 'rule' column: 'CIDEr < full', 'swap_rate > 0.9', 'CIDEr ≈ full ±0.02'."""
    vs = "reference" if c.vs is None else _short(c.vs) if isinstance(c.vs, float) else c.vs
    sign = {"below": "<", "above": ">", "equivalent": "≈"}[c.direction]
    return f"{c.quantity} {sign} {vs}" + (f" ±{_short(c.margin)}" if c.margin is not None else "")


def _custom_words(c: Check) -> str:
    vs = "the reference" if c.vs is None else _short(c.vs) if isinstance(c.vs, float) else c.vs
    if c.direction == "equivalent":
        return f"{label(c.quantity)} within ±{_short(c.margin)} of {vs}"
    return f"{label(c.quantity)} {c.direction} {vs}"


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def parse(raw: Any, where: str) -> list[Expectation]:
    """A row's ``expect``: one name, one inline table, or a list of them. Errors name ``where`` (file and key)."""
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for k, item in enumerate(items):
        at = f"{where}[{k}]" if isinstance(raw, list) else where
        if isinstance(item, str) and item in NAMED:
            out.append(NAMED[item])
        elif isinstance(item, dict):
            out.append(parse_custom(item, at))
        else:
            raise UserError(f"{where}: unknown expectation {item!r}; known: {', '.join(NAMED)}, or a table of keys "
                            f"({', '.join(EXPECT_KEYS)}); one of them or a list")
    return out


def parse_custom(item: dict, where: str) -> Expectation:
    for key in item:
        if key not in EXPECT_KEYS:
            raise UserError(f"{where}: unknown key '{key}'; known: {', '.join(EXPECT_KEYS)}")
    for key in ("quantity", "direction"):
        if key not in item:
            raise UserError(f"{where}: missing key '{key}' (an expectation needs quantity and direction; vs defaults "
                            "to the table's reference)")
    quantity, direction = item["quantity"], item["direction"]
    if not isinstance(quantity, str) or not known_quantity(quantity):
        raise UserError(f"{where}.quantity: unknown quantity {quantity!r}; known: {', '.join(QUANTITIES)}, "
                        "visual_reliance_layer_<k>")
    if direction not in DIRECTIONS:
        raise UserError(f"{where}.direction: one of {', '.join(DIRECTIONS)}, not {direction!r}")
    vs = item.get("vs")
    if vs is not None and not isinstance(vs, str):
        vs = _number(vs, f"{where}.vs")
    if vs == EVERY_WORKING:
        raise UserError(f"{where}.vs: {EVERY_WORKING!r} is the floor's own comparison; name a variant or a number")
    for key in ("words", "margin_reason"):
        if key in item and (not isinstance(item[key], str) or not item[key].strip()):
            raise UserError(f"{where}.{key}: expected non-empty text, got {item[key]!r}")
    margin = None
    if direction == "equivalent":
        if "margin" not in item or "margin_reason" not in item:
            raise UserError(f"{where}: direction = 'equivalent' needs 'margin' (the smallest difference that matters, "
                            "> 0) and 'margin_reason' (why that much, from numbers outside this comparison)")
        margin = _number(item["margin"], f"{where}.margin")
        if margin <= 0:
            raise UserError(f"{where}.margin: must be > 0, not {item['margin']!r}")
    elif "margin" in item or "margin_reason" in item:
        raise UserError(f"{where}: 'margin' and 'margin_reason' belong to direction = 'equivalent' only")
    check = Check(quantity, vs, direction, margin)
    words = item.get("words") or _custom_words(check)
    return Expectation(custom_name(check), words, (check,), claim=words, margin_reason=item.get("margin_reason", ""),
                       custom=True)


def check_against_table(expectations: list[Expectation], variant: str, variants: list[str], where: str) -> None:
    """Every ``vs`` that names a variant names one of the table (not the row itself)."""
    for k, e in enumerate(expectations):
        for c in e.checks:
            if isinstance(c.vs, str) and c.vs != EVERY_WORKING and (c.vs not in variants or c.vs == variant):
                at = f"{where}[{k}].vs" if len(expectations) > 1 else f"{where}.vs"
                raise UserError(f"{at}: {c.vs!r} is not another variant of this table (variants: {', '.join(variants)})")


def needs_slots(expectations: list[Expectation]) -> list[str]:
    """Names of the expectations that compare slot scores (only data with slot labels has them)."""
    return [e.name for e in expectations if e.quantities & set(SLOT_QUANTITIES)]
