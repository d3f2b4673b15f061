"""Every verdict rule and bound on synthetic runs whose answer is plain: each case has a twin on the other
side of the bound, so flipping a rule's side or moving its threshold fails here."""
import numpy as np
import pandas as pd
import pytest

from ablations.report import analysis

from ablations.decide import verdicts
from ablations.report.collect import TableRuns
from ablations.tables import load_table

from .micro import write_micro

SEEDS = (0, 1, 2, 3, 4)
IMAGES = 60


def _runs(tmp_path, spec: dict[str, dict], fingerprints: dict[str, list[str]] | None = None) -> TableRuns:
    """spec: variant -> {column: per-seed means (or one value for every seed)}; per-image values are the
    seed's mean plus small image noise, run-level rates as given."""
    table = load_table(str(write_micro(tmp_path / "rules.toml", seeds=SEEDS,
                                       variants=("full", "blind", "seed-recipe", "meanpool"))))
    rng = np.random.default_rng(0)
    rows, per_image = [], {}
    for v, cols in spec.items():
        per_image[v] = {}
        for k, s in enumerate(SEEDS):
            value = {c: (x[k] if isinstance(x, (list, tuple)) else x) for c, x in cols.items()}
            frame = pd.DataFrame({c: value[c] + rng.normal(0, 0.01, IMAGES) for c in
                                  ("CIDEr", "nll_gap", "slot_relation", "grounding_excess", "visual_reliance") if c in value},
                                 index=[f"i{j}" for j in range(IMAGES)])
            per_image[v][s] = frame
            rows.append({"variant": v, "seed": s, "images": 400, "empty_rate": 0.0, "eos_first_rate": 0.0,
                         "fingerprint": (fingerprints or {}).get(v, ["f"] * len(SEEDS))[k], **value})
    table_runs = TableRuns(table, tmp_path, pd.DataFrame(rows), list(spec))
    table_runs.per_image = per_image
    table_runs.configs = {v: {"model": {"train_qformer": v != "meanpool", "lora_rank": 0 if v == "meanpool" else 8}} for v in spec}
    return table_runs


def _decide(rule, table_runs, v):
    return verdicts.combine([t.decision for t in verdicts.decide_family(rule(table_runs, v))])


SPREAD = [-0.02, -0.01, 0.0, 0.01, 0.02]


def _around(x):
    return [x + d for d in SPREAD]


@pytest.mark.parametrize("swap, gap, expected", [(_around(0.95), _around(0.3), "held"),
                                                 (_around(0.85), _around(0.3), "not held"),   # swap bound 0.9
                                                 (_around(0.95), _around(-0.3), "not held")])  # gap bound 0
def test_image_dependent(tmp_path, swap, gap, expected):
    table_runs = _runs(tmp_path, {"full": {"swap_rate": swap, "nll_gap": gap, "CIDEr": 1.0}})
    assert _decide(verdicts.rule_image_dependent, table_runs, "full") == expected


@pytest.mark.parametrize("metric, rule", [("CIDEr", verdicts.rule_worse_than_reference),
                                          ("slot_relation", verdicts.rule_loses_relations),
                                          ("nll_gap", verdicts.rule_uses_image_less)])
@pytest.mark.parametrize("shift, expected", [(-0.5, "held"), (0.5, "not held"), (0.0, "inconclusive")])
def test_comparisons_with_the_reference(tmp_path, metric, rule, shift, expected):
    base = {"CIDEr": 1.0, "slot_relation": 0.5, "nll_gap": 1.0}
    table_runs = _runs(tmp_path, {"full": {k: _around(x) for k, x in base.items()},
                          "meanpool": {k: _around(x + (shift if k == metric else 0)) for k, x in base.items()}})
    assert _decide(rule, table_runs, "meanpool") == expected


@pytest.mark.parametrize("swap, cider, expected", [(0.0, 0.2, "held"), (0.2, 0.2, "not held"),  # swap bound 0.05
                                                   (0.0, 1.5, "not held")])  # CIDEr above a working variant
def test_floor(tmp_path, swap, cider, expected):
    table_runs = _runs(tmp_path, {"full": {"CIDEr": _around(1.0), "swap_rate": 0.95},
                          "blind": {"CIDEr": _around(cider), "swap_rate": swap}})
    assert _decide(verdicts.rule_floor, table_runs, "blind") == expected


@pytest.mark.parametrize("empty, expected", [(_around(0.95), "held"), (_around(0.8), "not held")])  # bound 0.9
def test_collapsed(tmp_path, empty, expected):
    table_runs = _runs(tmp_path, {"seed-recipe": {"CIDEr": 0.1, "empty_rate": empty, "eos_first_rate": empty}})
    assert _decide(verdicts.rule_collapsed, table_runs, "seed-recipe") == expected


def test_a_variant_whose_seeds_disagree_in_kind_is_not_decided(tmp_path):
    table_runs = _runs(tmp_path, {"full": {"CIDEr": _around(1.0)},
                          "meanpool": {"CIDEr": [0.0, 0.5, 0.5, 0.5, 0.5], "empty_rate": [0.9, 0, 0, 0, 0]}})
    (test,) = verdicts.decide_family(verdicts.rule_worse_than_reference(table_runs, "meanpool"))
    assert test.decision == "seeds disagree" and "some meanpool runs collapsed" in test.text()
    table_runs.runs.loc[table_runs.runs["variant"] == "meanpool", "empty_rate"] = 0.0  # the same numbers without a collapse
    (test,) = verdicts.decide_family(verdicts.rule_worse_than_reference(table_runs, "meanpool"))
    assert test.decision == "held"


def test_runs_from_two_code_versions_are_confounded_unless_verified(tmp_path):
    spec = {"full": {"CIDEr": _around(1.0)}, "meanpool": {"CIDEr": _around(0.5)}}
    table_runs = _runs(tmp_path, spec, fingerprints={"full": ["a"] * 5, "meanpool": ["b"] * 5})
    assert _decide(verdicts.rule_worse_than_reference, table_runs, "meanpool") == "confounded"
    table_runs.verification = [{"exact": True, "differed": ["code fingerprint"], "fingerprints": ["a"]}]
    assert _decide(verdicts.rule_worse_than_reference, table_runs, "meanpool") == "confounded"  # b never reproduced
    table_runs.verification.append({"exact": True, "differed": ["code fingerprint"], "fingerprints": ["a", "b"]})
    assert _decide(verdicts.rule_worse_than_reference, table_runs, "meanpool") == "held"


@pytest.mark.parametrize("goal, expected", [(0.9, "met"), (1.1, "not met"), (1.0, "undecided")])
def test_targets_are_judged_on_the_seed_level_ci(tmp_path, goal, expected):
    table_runs = _runs(tmp_path, {"full": {"CIDEr": _around(1.0)}})
    table_runs.table.targets = {"CIDEr": goal}
    (row,) = analysis.target_rows(table_runs, 0.0)
    assert row["decision"] == expected


def test_grounding_and_reliance_claims_have_sides(tmp_path):
    table_runs = _runs(tmp_path, {"full": {"CIDEr": 1.0, "grounding_excess": _around(0.1), "visual_reliance": _around(0.6)},
                          "meanpool": {"CIDEr": 1.0, "grounding_excess": _around(0.0), "visual_reliance": _around(0.4)}})
    table_runs.configs["meanpool"]["model"]["train_qformer"] = False
    grounding = {v.expectation if v.variant == "full" and not v.expected.endswith("meanpool") else "vs": v.verdict
                 for v in verdicts.grounding_verdicts(table_runs)}
    assert grounding == {"grounding_excess": "held", "vs": "held"}
    assert [v.verdict for v in verdicts.reliance_verdicts(table_runs)] == ["held"]
    table_runs.per_image["full"] = {s: f.assign(visual_reliance=f["visual_reliance"] - 0.4) for s, f in table_runs.per_image["full"].items()}
    table_runs.comparisons = {}
    assert [v.verdict for v in verdicts.reliance_verdicts(table_runs)] == ["not held"]


def test_a_family_is_holm_adjusted(tmp_path):
    """Two weak effects that each pass alone (p < 0.05) but not after Holm over the family."""
    from ablations.decide.stats import Interval

    tests = [verdicts.Test(f"t{k}", Interval(-0.1, -0.2, -0.01, p, 5), 0.0, "below") for k, p in enumerate([0.03, 0.04])]
    assert [t.decision for t in verdicts.decide_family(tests)] == ["inconclusive", "inconclusive"]
    alone = verdicts.decide_family([verdicts.Test("t", Interval(-0.1, -0.2, -0.01, 0.03, 5), 0.0, "below")])
    assert alone[0].decision == "held"


def test_a_partners_split_is_named_as_the_partners_not_the_variants(tmp_path):
    """Guards apply to the variant that shows them: when the reference's seeds split, a variant compared with it is
    not decided, and its verdict says the partner's seeds disagree, naming the partner, not its own."""
    table_runs = _runs(tmp_path, {"full": {"CIDEr": [0.0, 1.0, 1.0, 1.0, 1.0], "empty_rate": [0.9, 0, 0, 0, 0]},
                                  "meanpool": {"CIDEr": _around(0.5)}})
    (test,) = verdicts.decide_family(verdicts.rule_worse_than_reference(table_runs, "meanpool"))
    assert test.decision == "partner's seeds disagree" and "some full runs collapsed" in test.text()
    assert verdicts.combine([test.decision]) == "partner's seeds disagree"


def test_runs_from_two_machines_are_named_as_a_confound_until_a_verify_is_within_the_spread(tmp_path):
    """Mixed numerics setups (ISA, torch, threads) are named beside the numbers; the decision stands."""
    table_runs = _runs(tmp_path, {"full": {"CIDEr": _around(1.0)}, "meanpool": {"CIDEr": _around(0.5)}})
    table_runs.runs["numerics"] = np.where(table_runs.runs["variant"] == "full", "AVX2, torch 2, 1 thread(s), cpu fp32",
                                           "AVX-512, torch 2, 1 thread(s), cpu fp32")
    (test,) = verdicts.decide_family(verdicts.rule_worse_than_reference(table_runs, "meanpool"))
    assert test.decision == "held" and "machines differ" in test.text()
    assert "full on AVX2; meanpool on AVX-512" in test.caveat
    both = ["AVX-512, torch 2, 1 thread(s), cpu fp32", "AVX2, torch 2, 1 thread(s), cpu fp32"]
    table_runs.verification = [{"exact": False, "largest": {"seed_sds": 2.5}, "numerics": both}]  # outside the spread
    assert verdicts.rule_worse_than_reference(table_runs, "meanpool")[0].caveat
    table_runs.verification = [{"exact": False, "largest": {"seed_sds": 0.4}, "numerics": both}]
    assert verdicts.rule_worse_than_reference(table_runs, "meanpool")[0].caveat is None
    table_runs.runs["numerics"] = "AVX2, torch 2, 1 thread(s), cpu fp32"  # one machine: nothing to name
    table_runs.verification = []
    assert verdicts.rule_worse_than_reference(table_runs, "meanpool")[0].caveat is None


def test_a_quantity_has_one_seed_level_ci_in_a_report(tmp_path):
    """The NLL gap of the reference: the expectation's test, the likelihood table and the budget points all quote
    verdicts.seed_interval (issue 50 found [1.099, 1.144] and [1.093, 1.151] in one report: the floor in one only)."""
    from ablations.decide import budgets

    gap = [1.1, 1.1000001, 1.1, 1.0999999, 1.1]  # seeds that agree: the floor decides the CI's width
    table_runs = _runs(tmp_path, {"full": {"swap_rate": 0.95, "nll_gap": gap, "CIDEr": 1.0}})
    table_runs.captions = {"full": {s: {"i0": "a"} for s in SEEDS}}
    table_runs.runs["nll_gap"] = [table_runs.per_image["full"][s]["nll_gap"].mean() for s in SEEDS]  # as metrics.json
    (_, gap_test) = verdicts.rule_image_dependent(table_runs, "full")
    (row,) = analysis.likelihood_rows(table_runs)
    one = verdicts.seed_interval(table_runs, "full", "nll_gap")
    assert (gap_test.interval.low, gap_test.interval.high) == (one.low, one.high) == (row["seed"].low, row["seed"].high)
    assert budgets.seed_mean(table_runs, "full", "nll_gap") == one
    assert one.high - one.low > 0.001  # the floor (image noise 0.01 / sqrt(60 images)) sets it, not the seeds' 1e-7


def test_what_next_gives_an_undecided_verdict_the_seeds_its_plan_needs(tmp_path):
    """Issue 53: a "what next" line per undecided verdict, with the seeds from the simulated power (power.plan)."""
    from ablations.decide import power
    from ablations.report.summary import what_next

    table_runs = _runs(tmp_path, {"full": {"CIDEr": _around(1.0)}, "meanpool": {"CIDEr": _around(0.99)}})
    tests = verdicts.decide_family(verdicts.rule_worse_than_reference(table_runs, "meanpool"))
    verdict = verdicts._verdict("meanpool", "worse_than_reference", "worse", tests)
    assert verdict.verdict == "inconclusive"
    plan = tests[0].plan()
    line = what_next(verdict, "full")
    assert f"{power.seeds_text(plan.at_estimate)} seeds a side would decide Δ = {tests[0].interval.estimate:.3f}" in line
    assert f"{power.seeds_text(plan.at_far_end)} if the true difference were at the CI's far end" in line
