"""The seed-level rule's error rates by simulation (ablations/decide/rule_rates.py; benchmarks/verdict_rates.py
prints the full table). Bounds are tight enough that 90 % CIs (alpha 0.10) fail them."""
import numpy as np
import pytest

from ablations.decide import rule_rates
from ablations.decide.stats import holm

TABLES = 40_000  # Monte Carlo SE of a 5 % rate: 0.0011


@pytest.mark.parametrize("seeds", [3, 5])
@pytest.mark.parametrize("name", ["normal", "sd-ratio-9"])
def test_false_positive_rate_holds_for_normal_seeds(name, seeds):
    r, se = rule_rates.scenario(name, seeds, TABLES, np.random.default_rng(seeds))["welch"]
    assert r <= 0.06, (name, seeds, r, se)
    loose, _ = rule_rates.scenario(name, seeds, TABLES, np.random.default_rng(seeds), alpha=0.10)["welch"]
    assert loose > 0.06  # the bound can fail: 90 % CIs break it


def test_the_seeds_disagree_guard_lowers_the_bimodal_rate():
    """Tables where the variant's seeds show both modes are not decided; tables whose few seeds all miss the
    rare collapse stay decided (no 3-5-seed test can see a mode it never drew: the rate stays high)."""
    out = rule_rates.scenario("bimodal", 5, TABLES, np.random.default_rng(15))
    assert out["guarded"][0] < out["welch"][0], out


def test_zero_spread_seeds_never_decide_alone():
    rng = np.random.default_rng(0)
    assert rule_rates.zero_spread_decides(rng, floor=0.0) == 0.0  # no spread and no floor: nothing decided
    assert rule_rates.zero_spread_decides(rng, floor=0.1) == 0.0  # a floor: a difference under it is not enough


def test_the_budget_section_keeps_its_family_wise_rate():
    rng = np.random.default_rng(1)
    fwer, _ = rule_rates.budget_family(rng, TABLES // 4)
    unadjusted, _ = rule_rates.budget_family(rng, TABLES // 4, adjust=False)
    assert fwer <= 0.06 and unadjusted > 0.3, (fwer, unadjusted)


def test_power_at_a_four_sd_shift_with_five_seeds():
    rng = np.random.default_rng(2)
    power, _ = rule_rates.scenario("shift-4sd", 5, TABLES, rng)["welch"]
    in_family, _ = rule_rates.power_in_family(rng, TABLES // 4, family=10)
    assert power >= 0.8 and in_family <= power, (power, in_family)


def test_holm_matches_the_vectorised_step_down_and_keeps_order():
    rng = np.random.default_rng(3)
    p = rng.random((500, 6)) ** 3
    expected = np.array([[q < 0.05 for q in holm(list(row))] for row in p])
    assert (rule_rates.holm_reject(p) == expected).all()
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, float("nan")])[1])


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_pairing_welch_holds_its_rate_whether_or_not_seeds_pair(rho):
    """Why the reports stay unpaired: Welch keeps its rate (conservative when seeds pair); a paired t keeps it too
    but loses power when they do not pair, and shapes' 5 seeds cannot show that they do (benchmark)."""
    rng = np.random.default_rng(int(rho * 10) + 7)
    null = rule_rates.pairing_rates(rng, TABLES // 4, 5, rho, 0.0)
    assert null["welch"][0] <= 0.06 and null["paired"][0] <= 0.06, null
    shifted = rule_rates.pairing_rates(rng, TABLES // 4, 5, rho, 1.5)
    if rho == 0.0:
        assert shifted["paired"][0] < shifted["welch"][0], shifted  # the price of pairing what does not pair
    else:
        assert shifted["paired"][0] > shifted["welch"][0], shifted


# ---- the report's own functions, each with a test that a mutation of it fails (issue 50's audit)
@pytest.mark.parametrize("seeds", [3, 5])
def test_the_one_sample_rule_keeps_its_false_positive_rate(seeds):
    """A mean over seeds against a number (swap rate vs 0.9, ...) is stats.one_sample: t on n - 1 degrees of freedom.
    On n it decides 0.086 of null tables at 3 seeds (the audit's mutation)."""
    r, se = rule_rates.one_sample_rate(np.random.default_rng(40 + seeds), seeds, TABLES)
    assert 0.04 <= r <= 0.06, (r, se)


def test_one_sample_is_scipys_t_test():
    from scipy import stats as sps

    from ablations.decide.stats import one_sample

    x = np.array([0.91, 0.95, 0.97, 0.93])
    i, ref = one_sample(x, 0.9), sps.ttest_1samp(x, 0.9)
    assert i.p == pytest.approx(ref.pvalue) and (i.low, i.high) == pytest.approx(tuple(ref.confidence_interval(0.95)))


def test_the_floor_is_a_floor_on_the_seed_sd():
    """Seeds without spread: each side's SD is its floor f, so the CI's half-width is t(0.975, 2n - 2) f sqrt(2 / n)
    and a difference decides exactly when it exceeds it (the floor's role in decisions: docs/how-reports-decide.md)."""
    from scipy import stats as sps

    from ablations.decide.stats import decide, welch

    floor, n = 0.1, 3
    edge = sps.t.ppf(0.975, 2 * n - 2) * floor * np.sqrt(2 / n)
    base = np.full(n, 0.5)
    i = welch(base - edge, base, floor, floor)
    assert i.high - i.estimate == pytest.approx(edge)
    assert decide(welch(base - 1.02 * edge, base, floor, floor), 0.0, "below") == "held"
    assert decide(welch(base - 0.98 * edge, base, floor, floor), 0.0, "below") == "inconclusive"
    assert decide(welch(base - 10.0, base), 0.0, "below") == "inconclusive"  # no spread, no floor: never decides


def test_the_budget_section_adjusts_its_cells_with_holm(tmp_path, monkeypatch):
    """budgets.verdicts on a table whose every budget cell has p = 0.02: alone each decides, as one Holm family of
    six cells none does."""
    from ablations.decide import budgets
    from ablations.decide.stats import Interval

    from .test_budgets import _synthetic

    table_runs = _synthetic(tmp_path, cider_shift={1: -0.3, 2: -0.3, 4: -0.3}, gap_shift={1: -0.3, 2: -0.3, 4: -0.3})
    monkeypatch.setattr(budgets, "welch", lambda *a: Interval(-0.1, -0.2, -0.01, 0.02, 4))
    found = budgets.verdicts(table_runs)
    assert budgets.family_size(found) == 6
    assert all(d == "undecided" for v in found for d in v.directions), [v.directions for v in found]
    monkeypatch.setattr(budgets, "welch", lambda *a: Interval(-0.1, -0.2, -0.01, 0.005, 4))
    assert all(d == "lower" for v in budgets.verdicts(table_runs) for d in v.directions)
