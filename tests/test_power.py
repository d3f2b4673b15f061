"""Planning numbers hold (issue 50): at the printed "these seeds detect |Δ| ≥ X" and "N seeds per variant", the rule
the report applies (stats.welch + stats.decide, floors included), simulated afresh on independent tables, decides
at least 80 % of the time; a search cap prints as "> N"; a number at which the rule cannot decide is never printed."""
import numpy as np
import pytest

from ablations.decide import power, stats
from ablations.report.formatting import fmt_up

FRESH = 20_000  # independent tables: Monte Carlo SE of a power of 0.8 is 0.0028
SLACK = 3 * np.sqrt(0.8 * 0.2 / FRESH)


def _fresh_power(delta: float, n_x: int, n_y: int, arms: power.Arms, seed: int = 12345) -> float:
    """Per-seed normal values through the report's scalar path (stats.welch then stats.decide), table by table."""
    rng = np.random.default_rng(seed)
    x = rng.normal(delta, arms.sd_x, (FRESH, n_x))
    y = rng.normal(0.0, arms.sd_y, (FRESH, n_y))
    w = stats.welch_many(x, y, arms.floor_x, arms.floor_y)
    side = "below" if delta < 0 else "above"
    return float(np.mean(stats.decide_many(w.estimate, w.low, w.high, w.p, 0.0, side) == "held"))


# the flickr8k meanpool row (seed SDs at their image-level floors), a tight pair, unequal seeds and SDs
CASES = [(5, 5, power.Arms(0.018, 0.0175, 0.018, 0.0175)), (3, 3, power.Arms(1.0, 1.0)),
         (3, 5, power.Arms(0.2, 0.05, 0.1, 0.01)), (2, 2, power.Arms(1.0, 1.0))]


@pytest.mark.parametrize("n_x, n_y, arms", CASES)
def test_the_rule_detects_the_printed_difference_with_80_percent_power(n_x, n_y, arms):
    printed = float(fmt_up(power.detectable(n_x, n_y, arms), 4))
    assert _fresh_power(printed, n_x, n_y, arms) >= 0.8 - SLACK
    assert _fresh_power(-printed, n_x, n_y, arms) >= 0.8 - SLACK  # either side
    assert _fresh_power(0.8 * printed, n_x, n_y, arms) < 0.8  # and it is the edge, not a safe overstatement


def test_the_old_normal_approximation_overstated_the_power():
    """Issue 50: the closed formula's "80 %" X had far less power under the actual rule (3 seeds a side)."""
    from scipy.stats import norm

    arms = power.Arms(1.0, 1.0)
    normal_x = (norm.ppf(0.975) + norm.ppf(0.8)) * np.sqrt(2 / 3)
    assert _fresh_power(normal_x, 3, 3, arms) < 0.6 and power.detectable(3, 3, arms) > 1.5 * normal_x


@pytest.mark.parametrize("delta, arms", [(1.0, power.Arms(1.0, 1.0)), (0.02, power.Arms(0.018, 0.0175, 0.018, 0.0175)),
                                         (0.3, power.Arms(0.25, 0.2, 0.1, 0.1))])
def test_seeds_needed_hold_at_the_printed_count_and_not_one_fewer(delta, arms):
    n = power.seeds_needed(delta, arms)
    assert 2 <= n <= power.CAP
    assert _fresh_power(delta, n, n, arms) >= 0.8 - SLACK
    if n > 2:
        assert _fresh_power(delta, n - 1, n - 1, arms) < 0.8 + SLACK


def test_a_search_cap_is_shown_as_more_than_never_as_a_count():
    n = power.seeds_needed(0.004, power.Arms(0.018, 0.0175, 0.018, 0.0175))
    assert n == power.CAP + 1 and power.seeds_text(n) == f"> {power.CAP}"
    assert power.seeds_text(None) == "–" and power.seeds_text(7) == "7"


def test_nothing_to_size_gives_no_number():
    assert power.seeds_needed(0.0, power.Arms(1.0, 1.0)) is None
    assert power.seeds_needed(float("nan"), power.Arms(1.0, 1.0)) is None
    assert power.seeds_needed(1.0, power.Arms(float("nan"), 1.0)) is None
    assert np.isnan(power.detectable(1, 3, power.Arms(1.0, 1.0)))  # one seed: no test


def test_the_plan_shows_the_uncertainty_of_the_difference():
    """Seeds at the estimate and at both ends of the CI: a CI that reaches 0 has no near end (no number decides)."""
    arms = power.Arms(0.018, 0.0175, 0.018, 0.0175)
    p = power.plan(0.004, -0.022, 0.030, 5, 5, arms)
    assert p.far_end == 0.030 and p.near_end is None and p.at_near_end is None
    assert p.at_far_end < p.at_estimate  # a larger true difference needs fewer seeds
    shifted = power.plan(-0.05, -0.08, -0.02, 5, 5, arms)
    assert shifted.far_end == -0.08 and shifted.near_end == -0.02
    assert shifted.at_far_end <= shifted.at_estimate <= shifted.at_near_end


def test_one_sample_planning_runs_the_one_sample_rule():
    """Against a number (sd_y = 0) the power is the one-sample t's (stats.one_sample_moments)."""
    arms = power.Arms(1.0, 0.0)
    n = power.seeds_needed(1.0, arms)
    rng = np.random.default_rng(3)
    i = stats.one_sample_many(rng.normal(1.0, 1.0, (FRESH, n)), 0.0)
    held = np.mean(stats.decide_many(i.estimate, i.low, i.high, i.p, 0.0, "above") == "held")
    assert held >= 0.8 - SLACK
