"""Expectations declared in the table (one rule type: quantity, vs, direction, words) and the equivalence rule
(TOST within a declared margin): parsing and its errors, the six shipped names as instances of the one type, the
decisions on synthetic runs whose answer is plain (each case with a twin across the bound), the Holm family, and
the rule's simulated error rates computed by the report's own functions."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from ablations.decide import expectations

from ablations.decide import rule_rates

from ablations.decide import power, stats

from ablations.decide import verdicts
from ablations.decide.expectations import NAMED, Check, known_quantity, parse_custom
from ablations.run.planning import expected_hash
from ablations.tables import EXPECTATIONS, load_table, shipped_tables
from vlm_core.errors import UserError

from .test_rules import _around, _runs
from .test_tables import GOOD, _write

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"image_dependent", "worse_than_reference", "loses_relations", "uses_image_less", "floor", "collapsed"}


# ---- one rule type, the six names defined once
def test_the_six_shipped_names_are_instances_of_the_one_rule_type():
    assert set(NAMED) == set(EXPECTATIONS) == SHIPPED
    for e in NAMED.values():
        assert e.words and e.claim and e.checks
        for c in e.checks:
            assert known_quantity(c.quantity) and c.direction in expectations.DIRECTIONS, (e.name, c)
    assert NAMED["worse_than_reference"].checks == (Check("CIDEr", None, "below"),)  # None: the table's reference
    assert NAMED["image_dependent"].checks == (Check("swap_rate", 0.9, "above"), Check("nll_gap", 0.0, "above"))
    shapes = load_table("shapes")
    assert shapes.variants["meanpool"].expectations == [NAMED["worse_than_reference"], NAMED["loses_relations"]]
    assert shapes.variants["meanpool"].expect == ["worse_than_reference", "loses_relations"]


def test_an_expectation_written_in_the_table_is_the_same_rule_as_its_name(tmp_path):
    table_runs = _runs(tmp_path, {"full": {"CIDEr": _around(1.0), "swap_rate": 0.95, "nll_gap": _around(1.0)},
                                  "meanpool": {"CIDEr": _around(0.9), "swap_rate": 0.9, "nll_gap": _around(1.0)}})
    inline = parse_custom({"quantity": "CIDEr", "vs": "full", "direction": "below"}, "t")
    (named,) = verdicts.decide_family(verdicts.expectation_tests(table_runs, "meanpool", NAMED["worse_than_reference"]))
    (own,) = verdicts.decide_family(verdicts.expectation_tests(table_runs, "meanpool", inline))
    assert (own.label, own.interval, own.decision, own.text()) == (named.label, named.interval, "held", named.text())
    # a run-level quantity against another variant: Welch over the runs' values, binomial floors
    lower = parse_custom({"quantity": "swap_rate", "direction": "below"}, "t")
    (swap,) = verdicts.decide_family(verdicts.expectation_tests(table_runs, "meanpool", lower))
    assert swap.label == "Δswap rate meanpool − full" and swap.interval.estimate == pytest.approx(-0.05)
    assert swap.decision == "held"  # every seed the same rate, 400 images a run: the binomial floor is 0.015
    table_runs.runs.loc[table_runs.runs["variant"] == "meanpool", "swap_rate"] = 0.94
    (swap,) = verdicts.decide_family(verdicts.expectation_tests(table_runs, "meanpool", lower))
    assert swap.decision == "inconclusive"  # -0.01: within what 400 images a run can tell


ERRORS = [
    ('expect = [{quantity = "CIDer", direction = "below"}]', r"variants.meanpool.expect\[0\].quantity: unknown quantity 'CIDer'"),
    ('expect = [{quantity = "CIDEr", direction = "lower"}]', r"variants.meanpool.expect\[0\].direction: one of below, above"),
    ('expect = [{qauntity = "CIDEr", direction = "below"}]', r"variants.meanpool.expect\[0\]: unknown key 'qauntity'"),
    ('expect = [{quantity = "CIDEr"}]', r"variants.meanpool.expect\[0\]: missing key 'direction'"),
    ('expect = [{quantity = "CIDEr", vs = "fulll", direction = "below"}]', r"variants.meanpool.expect.vs: 'fulll' is not"),
    ('expect = [{quantity = "CIDEr", vs = "meanpool", direction = "below"}]', r"expect.vs: 'meanpool' is not another"),
    ('expect = [{quantity = "CIDEr", direction = "equivalent", margin = 0.02}]', r"expect\[0\]: direction = 'equivalent' needs"),
    ('expect = [{quantity = "CIDEr", direction = "equivalent", margin = 0, margin_reason = "x"}]', r"expect\[0\].margin: must be > 0"),
    ('expect = [{quantity = "CIDEr", direction = "equivalent", margin = "small", margin_reason = "x"}]',
     r"expect\[0\].margin: expected a finite number"),
    ('expect = [{quantity = "CIDEr", direction = "below", margin = 0.1}]', r"expect\[0\]: 'margin' and 'margin_reason' belong"),
    ('expect = [{quantity = "CIDEr", direction = "below", words = ""}]', r"expect\[0\].words: expected non-empty text"),
    ('expect = [{quantity = "CIDEr", vs = true, direction = "below"}]', r"expect\[0\].vs: expected a finite number"),
    ('expect = "worse_than_refrence"', "variants.meanpool.expect: unknown expectation 'worse_than_refrence'"),
    ('expect = [{quantity = "slot_relation", direction = "below"}]', "slot_relation < reference needs slot labels"),
]


@pytest.mark.parametrize("line, message", ERRORS)
def test_a_typo_in_an_expectation_names_the_key_and_the_file(tmp_path, line, message):
    text = GOOD.replace('expect = "worse_than_reference"', line)
    if "slot_relation" in line:
        text = text.replace('name = "shapes"', 'name = "flickr8k"')
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=message) as err:
        load_table(path)
    assert path in str(err.value)


def test_an_inline_expectation_parses_with_its_defaults(tmp_path):
    text = GOOD.replace('expect = "worse_than_reference"', 'expect = ["worse_than_reference", {quantity = "swap_rate", '
                        'vs = 0.9, direction = "above"}, {quantity = "CIDEr", direction = "equivalent", margin = 0.05, '
                        'margin_reason = "why"}]')
    v = load_table(_write(tmp_path, text)).variants["meanpool"]
    assert v.expect == ["worse_than_reference", "swap_rate > 0.9", "CIDEr ≈ reference ±0.05"]
    assert v.expectations[1].checks == (Check("swap_rate", 0.9, "above"),)
    same = v.expectations[2]
    assert same.equivalence == Check("CIDEr", None, "equivalent", 0.05) and same.margin_reason == "why"
    assert same.words == "CIDEr within ±0.05 of the reference" and same.claim == same.words


def test_expectations_are_not_run_settings_no_config_hash_changes():
    """Every cell of every shipped table hashes the same with its expectations and without any."""
    for name in shipped_tables():
        table = load_table(name)
        for v in table.variants.values():
            hashes = [expected_hash(table, v, s) for s in v.seeds]
            kept, v.expectations = v.expectations, []
            assert [expected_hash(table, v, s) for s in v.seeds] == hashes, (name, v.name)
            v.expectations = kept + [parse_custom({"quantity": "BLEU-4", "direction": "above", "vs": 0.1}, "t")]
            assert [expected_hash(table, v, s) for s in v.seeds] == hashes, (name, v.name)


def test_flickr8k_meanpool_declares_an_equivalence_with_its_margin_and_reason():
    (e,) = load_table("flickr8k").variants["meanpool"].expectations
    assert e.equivalence == Check("CIDEr", "full", "equivalent", 0.02)
    assert "0.478" in e.margin_reason and "0.497" in e.margin_reason and "0.524" in e.margin_reason


def test_every_column_the_evidence_records_is_a_quantity_a_table_can_name():
    records = sorted(ROOT.glob("reports/*/runs/*/seed-*/metrics.json"))
    assert records
    for path in records[::7]:
        m = json.loads(path.read_text())
        columns = {**m["metrics"], **m["slots"], **m["probes"]}
        for key, value in columns.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "nll_gap_p":
                assert known_quantity(key), (path, key)


# ---- the equivalence test
def test_tost_is_two_one_sided_welch_tests_and_its_90_percent_ci():
    rng = np.random.default_rng(4)
    for _ in range(20):
        x, y, margin = rng.normal(0.1, 1, 5), rng.normal(0, 0.5, 4), float(rng.uniform(0.5, 2))
        i = stats.tost(x, y, margin)
        low = sps.ttest_ind(x + margin, y, equal_var=False, alternative="greater").pvalue  # H0: Δ <= -margin
        high = sps.ttest_ind(x - margin, y, equal_var=False, alternative="less").pvalue  # H0: Δ >= margin
        assert i.p == pytest.approx(max(low, high), rel=1e-9)
        ci = sps.ttest_ind(x, y, equal_var=False).confidence_interval(0.90)
        assert (i.low, i.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert (i.p < 0.05) == (-margin < i.low and i.high < margin)
        assert stats.decide(i, 0.0, "equivalent", margin=margin) == ("held" if i.p < 0.05 else "inconclusive")
    same = stats.tost(np.ones(3), np.ones(3), 1.0)  # seeds without spread decide nothing
    assert math.isnan(same.p) and stats.decide(same, 0.0, "equivalent", margin=1.0) == "inconclusive"
    one = stats.tost_one_sample(np.array([0.9, 1.0, 1.1]), 1.0, 0.5)
    assert one.p == pytest.approx(max(sps.ttest_1samp([0.9, 1.0, 1.1], 0.5, alternative="greater").pvalue,
                                      sps.ttest_1samp([0.9, 1.0, 1.1], 1.5, alternative="less").pvalue))


def _equivalence(tmp_path, full: list[float], meanpool: list[float], margin: float):
    table_runs = _runs(tmp_path, {"full": {"CIDEr": full}, "meanpool": {"CIDEr": meanpool}})
    table_runs.table.variants["meanpool"].expectations = [parse_custom(
        {"quantity": "CIDEr", "vs": "full", "direction": "equivalent", "margin": margin, "margin_reason": "test"}, "t")]
    table_runs.table.variants["full"].expectations = []
    (v,) = [v for v in verdicts.expectations(table_runs) if v.variant == "meanpool"]
    return v


@pytest.mark.parametrize("shift, spread, expected", [
    (0.0, 1, "equivalent"),   # 90% CI about ±0.02 around 0: inside ±0.1
    (0.05, 1, "equivalent"),  # also differs from 0, but by less than the margin: equivalent
    (0.09, 1, "differs"),     # its twin across the margin: the 90% CI reaches past 0.1
    (0.3, 1, "differs"),
    (0.0, 10, "inconclusive"),  # seeds ten times as spread: neither decides
])
def test_equivalence_verdicts(tmp_path, shift, spread, expected):
    full = _around(1.0)
    meanpool = [1.0 + shift + spread * d for d in [-0.02, -0.01, 0.0, 0.01, 0.02]]
    v = _equivalence(tmp_path, full, meanpool, 0.1)
    assert v.verdict == expected, v.numbers
    assert v.expectation == "CIDEr ≈ full ±0.1" and "equivalent if inside ±0.1" in v.numbers
    assert [t.side for t in v.tests] == ["equivalent", "differs"]
    assert ("showing equivalence" in v.numbers) == (expected == "inconclusive")


def test_the_two_tests_of_an_equivalence_count_once_in_the_holm_family():
    x = np.array([0.0, 0.3, -0.3, 0.2, -0.2])
    y = x[::-1] + 0.01
    alone = verdicts.decide_family(verdicts.equivalence_tests(x, y, 0.35, "Δ"))
    p = alone[0].interval.p
    assert 0.025 < p < 0.05  # decided at its own 90% CI: plain Holm over the pair would double it past 0.05
    assert alone[0].p_adjusted == pytest.approx(p) and verdicts.equivalence_decision(alone) == "equivalent"
    others = [verdicts.Test(f"t{k}", stats.Interval(0.1, -0.1, 0.3, 0.5, 5), 0.0, "below") for k in range(2)]
    family = verdicts.decide_family(verdicts.equivalence_tests(x, y, 0.35, "Δ") + others)
    assert family[0].p_adjusted == pytest.approx(3 * p)  # three slots: the pair and the two others
    assert verdicts.equivalence_decision(family[:2]) == "inconclusive"
    assert stats.holm([0.01, 0.02, 0.5], groups=["a", "a", "b"]) == pytest.approx([0.02, 0.04, 0.5])
    assert stats.holm([0.01, 0.02, 0.5]) == pytest.approx([0.03, 0.04, 0.5])


def test_the_equivalence_counts_in_the_family_of_the_table(tmp_path):
    v = _equivalence(tmp_path, _around(1.0), [1.0 + 10 * d for d in [-0.02, -0.01, 0.0, 0.01, 0.02]], 0.1)
    assert len(v.tests) == 2 and all(not math.isnan(t.p_adjusted) for t in v.tests)
    table_runs = _runs(tmp_path, {"full": {"CIDEr": _around(1.0), "swap_rate": 0.95, "nll_gap": _around(1.0)},
                                  "meanpool": {"CIDEr": _around(1.0)}})
    table_runs.table.variants["meanpool"].expectations = [parse_custom(
        {"quantity": "CIDEr", "direction": "equivalent", "margin": 0.1, "margin_reason": "test"}, "t")]
    out = verdicts.expectations(table_runs)
    assert verdicts.family_size(out) == 4  # full: swap rate and NLL gap; meanpool: TOST and difference
    (mean,) = [v for v in out if v.variant == "meanpool"]
    assert mean.comparison is not None and mean.comparison.reference == "full"  # the README cell's difference


# ---- its error rates, simulated with the report's own functions
TABLES = 2000  # Monte Carlo SE of a 5 % rate: 0.005


@pytest.mark.parametrize("seeds", [3, 5, 8])
def test_a_difference_as_large_as_the_margin_is_rarely_called_equivalent(seeds):
    """At |Δ| = margin the rule says 'equivalent' at most 5 % of the time (the bound: 5 % + 3 Monte Carlo SEs);
    a 80% CI (TOST at 10 % a side) breaks it at 8 seeds."""
    out = rule_rates.equivalence_rates(np.random.default_rng(seeds), TABLES, seeds, 3.0, 3.0)["equivalent"]
    assert out[0] <= 0.065, out
    below = rule_rates.equivalence_rates(np.random.default_rng(seeds), TABLES, seeds, -3.0, 3.0)["equivalent"]
    assert below[0] <= 0.065, below


def test_equivalence_power_grows_with_seeds_and_a_zero_difference_rarely_differs():
    rng = np.random.default_rng(11)
    rates = [rule_rates.equivalence_rates(rng, TABLES, n, 0.0, 2.0) for n in (3, 5, 8)]
    found = [p["equivalent"][0] for p in rates]
    assert found[0] < found[1] < found[2] and found[1] > 0.6 and found[2] > 0.9, found
    assert all(p["differs"][0] <= 0.065 for p in rates), rates
    # The planning number (power.seeds_for_equivalence, simulated on the TOST core): at it, the whole verdict path
    # shows equivalence at least 80 % of the time (less 3 Monte Carlo SEs of these 2,000 tables), one seed fewer not.
    n = power.seeds_for_equivalence(2.0, power.Arms(1.0, 1.0))
    assert rule_rates.equivalence_rates(rng, TABLES, n, 0.0, 2.0)["equivalent"][0] >= 0.8 - 3 * 0.009
    assert rule_rates.equivalence_rates(rng, TABLES, n - 1, 0.0, 2.0)["equivalent"][0] < 0.8


def test_a_partners_split_seeds_do_not_relabel_the_floor():
    """Issue 50: flickr8k-tiny's `blind` (no empty caption in any run) was shown "seeds disagree" because one of
    the variants it is compared with (`seed-recipe`: 1 of 3 runs collapsed) split; a guard belongs to the variant
    that shows it, and the floor compares only with variants none of whose runs collapsed."""
    from pathlib import Path

    from ablations.report.analysis import analyse
    from ablations.report.collect import collect
    from ablations.tables import load_table
    from ablations.decide.verdicts import seeds_disagree

    root = Path(__file__).resolve().parents[1]
    table = load_table("flickr8k-tiny")
    a = analyse(collect(table, root / "reports" / "flickr8k-tiny" / "runs"))
    assert seeds_disagree(a.runs, "seed-recipe") and not seeds_disagree(a.runs, "blind")
    blind = next(v for v in a.expectations if v.variant == "blind")
    assert blind.verdict != "seeds disagree" and not any("seed-recipe" in t.label for t in blind.tests)
    recipe = next(v for v in a.expectations if v.variant == "seed-recipe")
    assert recipe.verdict == "seeds disagree"  # the variant that shows it keeps it
