"""Planning numbers from the rule's own simulated power: the smallest difference the current seeds detect and
the seeds a decision would take.

A closed formula (normal approximation, or a noncentral t on pooled SDs) is not the rule the report applies: the
report floors each side's seed SD, uses Welch's degrees of freedom, and treats a zero-spread CI as undecided. Its
"80 % power" numbers came out at 0.42 simulated power (issue 50). Here the power is the share of simulated tables
that stats.welch_moments + stats.decide_many (the report's own functions) decide on the right side: normal seeds
whose SDs are the ones the test uses (each side's own, never below its floor), drawn as their exact sufficient
statistics (the mean and the chi-square seed variance), so the cost does not grow with the seeds. A number is
printed only where the simulated power at it is at least 0.8; a search that reaches CAP seeds says "> CAP".

Power is of the test alone at 5 % (before Holm): in a family, Holm can only lower it, the most when every other
test of the family is undecided too (at most to testing at 5 % / family size)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ablations.decide.stats import Comparison, decide_many, one_sample_moments, tost_moments, welch_moments

POWER = 0.8
TABLES = 8000  # Monte Carlo SE of a power of 0.8: 0.0045
# What a search asks of its simulated tables: 0.8 plus two of their Monte Carlo SEs, so that the power at a printed
# number, simulated afresh, is at least 0.8 (tests/test_power.py checks it on independent tables).
TARGET = POWER + 2 * math.sqrt(POWER * (1 - POWER) / TABLES)
CAP = 200  # seeds per variant searched; beyond it a planning number says "> 200"
SEED = 0  # the simulated tables are drawn the same way for every size (common random numbers)


@dataclass(frozen=True)
class Arms:
    """What the simulation assumes: seed SDs of each side (sd_y = 0: a number, a one-sample test) and the floors
    the test puts under them."""

    sd_x: float
    sd_y: float
    floor_x: float = 0.0
    floor_y: float = 0.0

    @property
    def usable(self) -> bool:
        return not any(math.isnan(v) for v in (self.sd_x, self.sd_y)) and (self.sd_x > 0 or self.sd_y > 0)


def _draws(n: int, tables: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal means and chi-square(n - 1) / (n - 1) variance factors of ``tables`` sets of n normal seeds."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(tables), rng.chisquare(n - 1, tables) / (n - 1)


def difference_power(delta: float, n_x: int, n_y: int, arms: Arms, tables: int = TABLES, seed: int = SEED) -> float:
    """Share of simulated tables in which Welch over seeds (floored, stats.welch_moments) decides a true difference
    ``delta`` on its side (stats.decide_many at p < 0.05)."""
    (zx, cx), (zy, cy) = _draws(n_x, tables, seed), _draws(n_y, tables, seed + 1)
    w = welch_moments(delta + arms.sd_x * zx / math.sqrt(n_x), arms.sd_x**2 * cx, n_x,
                      arms.sd_y * zy / math.sqrt(n_y), arms.sd_y**2 * cy, n_y, arms.floor_x, arms.floor_y)
    side = "below" if delta < 0 else "above"
    return float(np.mean(decide_many(w.estimate, w.low, w.high, w.p, 0.0, side) == "held"))


def one_sample_power(delta: float, n: int, arms: Arms, tables: int = TABLES, seed: int = SEED) -> float:
    """The same for a mean over seeds against a number (``delta`` = true mean - the number)."""
    z, c = _draws(n, tables, seed)
    i = one_sample_moments(delta + arms.sd_x * z / math.sqrt(n), arms.sd_x**2 * c, n, 0.0, arms.floor_x)
    side = "below" if delta < 0 else "above"
    return float(np.mean(decide_many(i.estimate, i.low, i.high, i.p, 0.0, side) == "held"))


def rule_power(delta: float, n_x: int, n_y: int, arms: Arms, tables: int = TABLES, seed: int = SEED) -> float:
    """The power of the test the report runs: Welch, or the one-sample t when the other side is a number."""
    if arms.sd_y == 0 and arms.floor_y == 0:
        return one_sample_power(delta, n_x, arms, tables, seed)
    return difference_power(delta, n_x, n_y, arms, tables, seed)


def equivalence_power(margin: float, n: int, arms: Arms, difference: float = 0.0, tables: int = TABLES,
                      seed: int = SEED) -> float:
    """Share of simulated tables whose TOST (stats.tost_moments on Welch's SE and df, or the one-sample t when
    sd_y = 0) shows equivalence within ±margin when the true difference is ``difference``."""
    (zx, cx), (zy, cy) = _draws(n, tables, seed), _draws(n, tables, seed + 1)
    mean_x, var_x = difference + arms.sd_x * zx / math.sqrt(n), arms.sd_x**2 * cx
    if arms.sd_y > 0 or arms.floor_y > 0:
        i = welch_moments(mean_x, var_x, n, arms.sd_y * zy / math.sqrt(n), arms.sd_y**2 * cy, n, arms.floor_x,
                          arms.floor_y)
    else:
        i = one_sample_moments(mean_x, var_x, n, 0.0, arms.floor_x)
    t = tost_moments(i.estimate, i.se, i.df, 0.0, margin)
    return float(np.mean(decide_many(t.estimate, t.low, t.high, t.p, 0.0, "equivalent") == "held"))


def detectable(n_x: int, n_y: int, arms: Arms, tables: int = TABLES) -> float:
    """The smallest |Δ| that ``n_x`` and ``n_y`` seeds decide with at least 80 % simulated power (NaN when nothing
    can be sized). The tables are drawn once (common random numbers), so power grows with Δ and a bisection
    finds the edge; the value returned is one at which the measured power is >= 0.8."""
    if n_x < 2 or n_y < 2 or not arms.usable:
        return float("nan")
    scale = math.sqrt(max(arms.sd_x, arms.floor_x) ** 2 / n_x + max(arms.sd_y, arms.floor_y) ** 2 / n_y)
    low, high = 0.0, scale
    for _ in range(60):
        if rule_power(high, n_x, n_y, arms, tables) >= TARGET:
            break
        low, high = high, high * 2
    else:
        return float("nan")
    while high - low > 1e-4 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if rule_power(mid, n_x, n_y, arms, tables) >= TARGET else (mid, high)
    return high


def smallest_seeds(power_at: Callable[[int], float], cap: int = CAP) -> int:
    """The least n in [2, cap] with power_at(n) >= 0.8 (doubling, then bisection: power grows with n), or cap + 1
    when even ``cap`` seeds fall short (shown as "> cap", never as a count)."""
    if power_at(cap) < TARGET:
        return cap + 1
    low, high = 1, 2  # one seed decides nothing
    while high < cap and power_at(high) < TARGET:
        low, high = high, min(2 * high, cap)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= TARGET else (mid, high)
    return high


def seeds_needed(delta: float, arms: Arms, cap: int = CAP) -> int | None:
    """Seeds per variant (both sides) at which the rule decides a true difference ``delta`` with >= 80 % simulated
    power; cap + 1 for "more than cap"; None when there is nothing to size (no difference, no spread)."""
    if not arms.usable or math.isnan(delta) or delta == 0:
        return None
    return smallest_seeds(lambda n: rule_power(delta, n, n, arms), cap)


def seeds_for_equivalence(margin: float, arms: Arms, difference: float = 0.0, cap: int = CAP) -> int | None:
    """Seeds per variant at which TOST shows equivalence within ±``margin`` with >= 80 % simulated power when the
    true difference is ``difference``; cap + 1 for "more than cap"; None when nothing can be sized."""
    if not arms.usable or margin - abs(difference) <= 0:
        return None
    return smallest_seeds(lambda n: equivalence_power(margin, n, arms, difference), cap)


def seeds_text(n: int | None, cap: int = CAP) -> str:
    """How a planning count is printed: '–' for nothing to size, '> cap' past the search, else the count."""
    return "–" if n is None else f"> {cap}" if n > cap else str(n)


@dataclass
class Plan:
    """What more seeds could do for one difference (variant − other): the smallest |Δ| the current seeds detect,
    and the seeds per variant a decision would take at the estimate and, for the uncertainty of Δ, at the ends
    of its 95% CI. ``near_end`` is None when the CI reaches 0 (or crosses it): there no number of seeds decides."""

    detectable: float
    at_estimate: int | None
    far_end: float
    at_far_end: int | None
    near_end: float | None
    at_near_end: int | None


def plan(estimate: float, low: float, high: float, n_x: int, n_y: int, arms: Arms,
         detectable_now: float | None = None) -> Plan:
    """The planning numbers of one difference (its estimate and 95% CI, the seeds each side has now;
    ``detectable_now`` when already computed)."""
    ends = sorted((low, high), key=abs)
    far = ends[1] if not math.isnan(low) else float("nan")
    near = ends[0] if not math.isnan(low) and (low > 0 or high < 0) else None
    return Plan(detectable(n_x, n_y, arms) if detectable_now is None else detectable_now, seeds_needed(estimate, arms),
                far, seeds_needed(far, arms), near, seeds_needed(near, arms) if near is not None else None)


def _used_sd(sd: float, floor: float) -> float:
    return float("nan") if math.isnan(sd) else max(sd, floor)


def comparison_arms(c: Comparison) -> Arms:
    """The seed SDs a comparison's test uses (each side's own, never below its floor) and its floors."""
    return Arms(_used_sd(c.sd_variant, c.floor_variant), _used_sd(c.sd_reference, c.floor_reference),
                c.floor_variant, c.floor_reference)


def comparison_detectable(c: Comparison) -> float:
    """The smallest |Δ| the comparison's seeds decide with 80% simulated power (computed once per comparison)."""
    if "detectable" not in c.cache:
        c.cache["detectable"] = detectable(c.n_variant, c.n_reference, comparison_arms(c))
    return c.cache["detectable"]


def comparison_plan(c: Comparison) -> Plan:
    """A comparison's planning numbers (computed when first asked for: only undecided comparisons need them)."""
    if "plan" not in c.cache:
        i = c.seed_level
        c.cache["plan"] = plan(i.estimate, i.low, i.high, c.n_variant, c.n_reference, comparison_arms(c),
                               comparison_detectable(c))
    return c.cache["plan"]
