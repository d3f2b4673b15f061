"""Statistics behind the verdicts. The unit of replication is the training run (seed).

A claim about an architecture ("the Q-Former beats mean-pooling") is a claim about what training
produces, so its uncertainty must include seed-to-seed variation. Per-image tests over a fixed set
of trained models only say whether *these trained models* differ; with seed noise larger than
image noise they call almost any two variants different. Both are computed here; verdicts use
the seed-level ones.

Seed level: each run is reduced to one number (its mean over the eval images) and the variants
are compared with Welch's t (95% CI and two-sided p on the per-seed values). With the 3-5 seeds a
CPU table affords, a bootstrap over seeds cannot reach its nominal coverage (it treats three draws
as the whole population and its intervals come out too narrow), while Welch's t holds it for
normal seed noise up to Welch's approximation of the degrees of freedom; images still enter, through
each seed's mean. Under strong skew no 3-5-seed test holds its rate (benchmarks/verdict_rates.py
measures how far it drifts), which is why a variant whose seeds disagree in kind is not decided.

Guards: a seed spread is never taken as smaller than what a run's images alone give it (``floor``, the
standard error of one run's mean over its images), so seeds that agree exactly do not make a zero-width
CI that decides by itself; verdicts drawn together are a family whose p-values are Holm-adjusted
(``holm``), so the chance that any of them is decided by chance stays at 5 %. The simulation tests in
tests/test_verdict_rates.py check the rates and the power.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 1000


def mean_std(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per variant: columns '<metric>' and '<metric>_std' (NaN for one seed)."""
    g = runs.groupby("variant", sort=False)[columns]
    mean, std = g.mean(), g.std(ddof=1)
    out = mean.copy()
    for c in columns:
        out[f"{c}_std"] = std[c]
    out["seeds"] = g.size()
    return out


@dataclass
class Interval:
    """A mean (or difference) over seeds with its 95% CI; the CI is NaN with fewer than 2 seeds."""

    estimate: float
    low: float
    high: float
    p: float  # two-sided, against 0 (differences) or the bound (one-sample); NaN when undefined
    n: int  # seeds (the smaller side for a difference)

    @property
    def decided(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))


def _welch_parts(x: np.ndarray, y: np.ndarray, floor_x: float, floor_y: float) -> tuple[float, float, float]:
    """(difference, its SE, Welch's degrees of freedom); each side's seed SD at least its floor. df is NaN where
    neither side has any spread."""
    vx, vy = max(x.var(ddof=1), floor_x**2) / len(x), max(y.var(ddof=1), floor_y**2) / len(y)
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)) if vx or vy else float("nan")
    return float(x.mean() - y.mean()), se, df


def welch(x: np.ndarray, y: np.ndarray, floor_x: float = 0.0, floor_y: float = 0.0) -> Interval:
    """mean(x) - mean(y) with a Welch 95% CI and p; each side's seed SD is at least its ``floor`` (the SE a
    run's mean has from its images alone). Zero spread and no floor gives a point CI and p = NaN
    (undefined, never an invented 0: such an interval decides nothing)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else float("nan")
    n = min(len(x), len(y))
    if len(x) < 2 or len(y) < 2:
        return Interval(diff, float("nan"), float("nan"), float("nan"), n)
    diff, se, df = _welch_parts(x, y, floor_x, floor_y)
    if se <= 1e-12 * max(1.0, abs(float(y.mean()))):  # no spread (up to rounding): a point, p undefined
        return Interval(diff, diff, diff, 1.0 if diff == 0 else float("nan"), n)
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Interval(diff, diff - half, diff + half, p, n)


def _tost(estimate: float, se: float, df: float, center: float, margin: float, n: int) -> Interval:
    """Two one-sided t tests of |estimate - center| < margin at ALPHA each: the (1 - 2 ALPHA) = 90% CI, and p =
    the larger one-sided p (both must reject; the CI lies inside center ± margin exactly when p < ALPHA)."""
    half = stats.t.ppf(1 - ALPHA, df) * se
    p_low = stats.t.sf((estimate - (center - margin)) / se, df)  # H0: estimate <= center - margin
    p_high = stats.t.cdf((estimate - (center + margin)) / se, df)  # H0: estimate >= center + margin
    return Interval(estimate, estimate - half, estimate + half, float(max(p_low, p_high)), n)


def tost(x: np.ndarray, y: np.ndarray, margin: float, floor_x: float = 0.0, floor_y: float = 0.0) -> Interval:
    """Equivalence of mean(x) and mean(y) within ±``margin`` over seeds: Welch's SE and degrees of freedom (each
    side's SD floored as in ``welch``), two one-sided tests (TOST, Schuirmann 1987) at ALPHA each, returned as the
    90% CI of the difference with p = the larger one-sided p. statsmodels' ttost_ind computes the same without
    the floors; it is not a dependency. Zero spread gives p = NaN: no test decides on seeds without spread."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = min(len(x), len(y))
    if len(x) < 2 or len(y) < 2:
        diff = float(x.mean() - y.mean()) if len(x) and len(y) else float("nan")
        return Interval(diff, float("nan"), float("nan"), float("nan"), n)
    diff, se, df = _welch_parts(x, y, floor_x, floor_y)
    if se <= 1e-12 * max(1.0, abs(float(y.mean()))):
        return Interval(diff, diff, diff, float("nan"), n)
    return _tost(diff, se, df, 0.0, margin, n)


def tost_one_sample(values: np.ndarray, center: float, margin: float, floor: float = 0.0) -> Interval:
    """The mean over seeds within ``center`` ± ``margin``: TOST with a one-sample t (seed SD at least ``floor``)."""
    v = np.asarray(values, float)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return Interval(mean, float("nan"), float("nan"), float("nan"), len(v))
    se = max(v.std(ddof=1), floor) / math.sqrt(len(v))
    if se <= 1e-12 * max(1.0, abs(mean)):
        return Interval(mean, mean, mean, float("nan"), len(v))
    return _tost(mean, se, len(v) - 1, center, margin, len(v))


def one_sample(values: np.ndarray, bound: float = 0.0, limits: tuple[float, float] | None = None,
               floor: float = 0.0) -> Interval:
    """Mean over seeds with a t 95% CI, and p against ``bound``; the seed SD is at least ``floor``;
    ``limits`` clips the CI to the values the quantity can take (a rate's CI stays within [0, 1])."""
    v = np.asarray(values, float)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return Interval(mean, float("nan"), float("nan"), float("nan"), len(v))
    se = max(v.std(ddof=1), floor) / math.sqrt(len(v))
    if se <= 1e-12 * max(1.0, abs(mean)):  # no spread (up to rounding): a point, p undefined
        return Interval(mean, mean, mean, 1.0 if mean == bound else float("nan"), len(v))
    half = stats.t.ppf(1 - ALPHA / 2, len(v) - 1) * se
    p = float(2 * stats.t.sf(abs(mean - bound) / se, len(v) - 1))
    low, high = mean - half, mean + half
    if limits is not None:
        low, high = max(low, limits[0]), min(high, limits[1])
    return Interval(mean, low, high, p, len(v))


def decide(interval: Interval, bound: float, side: str, p: float | None = None, margin: float | None = None) -> str:
    """'held' when the whole CI lies on ``side`` ('below' / 'above') of ``bound``, 'not held' when it
    lies wholly on the other side, else 'inconclusive' (also with fewer than 2 seeds, or an undefined p).
    With ``p`` (a family-adjusted p-value of the same test), decided only when ``p`` < ALPHA, on the side
    of the estimate: the unadjusted rule is the same as p < ALPHA for these t intervals.

    Two sides decide only one way ('held' or 'inconclusive'): 'equivalent' (a TOST interval, ``tost``: its CI
    inside ``bound`` ± ``margin``) and 'differs' (a 95% CI that excludes ``bound``)."""
    if not interval.decided or interval.high == interval.low or math.isnan(interval.p if p is None else p):
        return "inconclusive"  # (a zero-width CI comes from seeds without spread: it decides nothing alone)
    if side in ("equivalent", "differs"):
        if p is not None:
            return "held" if p < ALPHA else "inconclusive"
        if side == "equivalent":
            inside = bound - margin < interval.low and interval.high < bound + margin
        else:
            inside = interval.high < bound or interval.low > bound
        return "held" if inside else "inconclusive"
    if p is not None:
        if p >= ALPHA:
            return "inconclusive"
        below, above = interval.estimate < bound, interval.estimate > bound
    else:
        below, above = interval.high < bound, interval.low > bound
    if side == "below":
        return "held" if below else "not held" if above else "inconclusive"
    return "held" if above else "not held" if below else "inconclusive"


def holm(pvalues: list[float], groups: list | None = None) -> list[float]:
    """Holm's step-down adjustment: reject p_adj < ALPHA and the family-wise error rate stays <= ALPHA
    under any dependence between the tests. NaN (an undefined test) stays NaN and counts in the family.

    ``groups``: tests with the same group can never be true nulls together (the two tests of an equivalence check:
    Δ = 0 and |Δ| >= margin exclude each other), so a group counts once among the tests still to be decided
    (Shaffer 1986's logical restriction). At the first true null rejected, every true null is still undecided and
    each sits in a group of its own, so the multiplier is still at least their number and the Bonferroni bound of
    Holm's proof holds. Without groups, each test is its own: plain Holm."""
    p = np.asarray(pvalues, float)
    m = len(p)
    groups = list(range(m)) if groups is None else list(groups)
    order = np.argsort(np.where(np.isnan(p), np.inf, p))
    out, running = np.full(m, np.nan), 0.0
    for rank, k in enumerate(order):
        if np.isnan(p[k]):
            continue
        remaining = len({groups[i] for i in order[rank:]})  # m - rank without groups
        running = max(running, min(1.0, remaining * p[k]))
        out[k] = running
    return out.tolist()


def image_floor(per_image: pd.DataFrame) -> float:
    """The SE of one run's mean over its images (images x seeds; the mean over runs): the least spread a run
    mean has, whatever the seeds do."""
    n = per_image.notna().sum(axis=0).clip(lower=1)
    return float(np.sqrt((per_image.var(axis=0, ddof=1) / n).mean())) if per_image.shape[0] > 1 else 0.0


def rate_floor(rates: np.ndarray, images: np.ndarray) -> float:
    """The least SE of a share measured on ``images`` per run (Agresti-Coull: never 0, even at 0 or 1)."""
    rates, images = np.asarray(rates, float), np.asarray(images, float)
    if not len(rates):
        return 0.0
    p = (rates * images + 2) / (images + 4)
    return float(np.sqrt(np.mean(p * (1 - p) / (images + 4))))


def detectable(sd_a: float, sd_b: float, n: int) -> float:
    """The smallest difference a Welch comparison of ``n`` seeds a side detects with 80% power at the
    observed seed SDs (normal approximation); NaN without spread or seeds."""
    if n < 2 or any(math.isnan(x) for x in (sd_a, sd_b)):
        return float("nan")
    return (stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)) * math.sqrt((sd_a**2 + sd_b**2) / n)


def seeds_needed_range(diff: float, sd_a: float, sd_b: float, n_a: int, n_b: int) -> tuple[int, int] | None:
    """Seeds per variant for 80% power at the pooled seed SD's 80% confidence bounds: an SD estimated from
    2-4 seeds is so uncertain that one number would mislead. None when there is nothing to size."""
    df = n_a + n_b - 2
    if df < 1 or any(math.isnan(x) for x in (sd_a, sd_b, diff)) or not diff:
        return None
    pooled = ((n_a - 1) * sd_a**2 + (n_b - 1) * sd_b**2) / df
    low_sd = math.sqrt(df * pooled / stats.chi2.ppf(0.9, df))
    high_sd = math.sqrt(df * pooled / stats.chi2.ppf(0.1, df))
    low, high = seeds_needed(diff, low_sd, low_sd), seeds_needed(diff, high_sd, high_sd)
    return None if low is None or high is None else (min(low, high), max(low, high))


def seeds_needed(diff: float, sd_a: float, sd_b: float) -> int | None:
    """Seeds per variant for a two-sample t-test to detect ``diff`` with 80% power at alpha 0.05,
    given the observed seed SDs; None when there is nothing to size (no difference or no spread)."""
    sd = math.sqrt((sd_a**2 + sd_b**2) / 2) if not (math.isnan(sd_a) or math.isnan(sd_b)) else float("nan")
    if not diff or math.isnan(diff) or math.isnan(sd) or sd == 0:
        return None
    for n in range(2, MAX_SEEDS + 1):
        df = 2 * n - 2
        ncp = abs(diff) / (sd * math.sqrt(2 / n))
        if ncp > 30:  # power is 1 to any printed digit (and scipy's noncentral t turns NaN out there)
            return n
        crit = stats.t.ppf(1 - ALPHA / 2, df)
        if stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp) >= POWER:
            return n
    return MAX_SEEDS + 1


def seeds_for_equivalence(margin: float, sd_a: float, sd_b: float, difference: float = 0.0) -> int | None:
    """Seeds per variant for TOST (ALPHA each side) to show equivalence within ±``margin`` with 80% power when
    the true difference is ``difference``, at the given seed SDs (sd_b = 0: against a number): the least n with
    (margin - |difference|) / SE >= t(1 - ALPHA) + t(power quantile), t on 2n - 2 degrees of freedom. An estimate
    (rule_rates.equivalence_rates simulates the rule itself); None when nothing can be sized."""
    if any(math.isnan(x) for x in (sd_a, sd_b)) or (sd_a == 0 and sd_b == 0) or margin - abs(difference) <= 0:
        return None
    beta = (1 - POWER) / (2 if difference == 0 else 1)  # at 0 either one-sided test can fail
    for n in range(2, MAX_SEEDS + 1):
        se = math.sqrt((sd_a**2 + sd_b**2) / n)
        df = 2 * n - 2 if sd_b else n - 1
        if (margin - abs(difference)) / se >= stats.t.ppf(1 - ALPHA, df) + stats.t.ppf(1 - beta, df):
            return n
    return MAX_SEEDS + 1


def paired_difference(variant: np.ndarray, reference: np.ndarray, seed: int = 0, n_resamples: int = 2000) -> dict:
    """Image level ("these trained models"): mean per-image difference variant - reference, with a
    bootstrap 95% CI over images and a Wilcoxon signed-rank p (NaN when undefined: < 2 images)."""
    diff = np.asarray(variant, dtype=float) - np.asarray(reference, dtype=float)
    diff = diff[~np.isnan(diff)]
    mean = float(diff.mean()) if diff.size else float("nan")
    if diff.size < 2:
        return {"mean_diff": mean, "ci_low": float("nan"), "ci_high": float("nan"), "p_wilcoxon": float("nan"),
                "n": int(diff.size)}
    if np.allclose(diff, diff[0]):  # no spread: the interval is the point, the test still applies
        low = high = mean
    else:
        boot = stats.bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=n_resamples,
                               method="percentile", random_state=np.random.default_rng(seed))
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return {"mean_diff": mean, "ci_low": low, "ci_high": high, "p_wilcoxon": p, "n": int(diff.size)}


@dataclass
class Comparison:
    """variant - reference on one per-image quantity, at seed level (verdicts) and image level."""

    variant: str
    reference: str
    metric: str
    seed_level: Interval  # Welch on per-seed means (each side's SD floored by its image-level SE)
    sd_variant: float
    sd_reference: float
    detectable: float  # the smallest |difference| these seeds detect with 80% power
    seeds_range: tuple[int, int] | None  # seeds per variant for 80% power, at the seed SD's 80% bounds
    image: dict  # paired_difference on per-image values averaged over seeds


def compare(variant: pd.DataFrame, reference: pd.DataFrame, names: tuple[str, str] = ("variant", "reference"),
            metric: str = "CIDEr", n_resamples: int = 2000) -> Comparison:
    """``variant`` / ``reference``: per-image values, one column per seed (index = image id)."""
    x, y = variant.mean(axis=0).to_numpy(), reference.mean(axis=0).to_numpy()  # per-seed means (NaN skipped)
    seed = welch(x, y, image_floor(variant), image_floor(reference))
    sd_x = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
    sd_y = float(np.std(y, ddof=1)) if len(y) > 1 else float("nan")
    common = variant.index.intersection(reference.index)
    image = paired_difference(variant.loc[common].mean(axis=1).to_numpy(), reference.loc[common].mean(axis=1).to_numpy(),
                              n_resamples=n_resamples)
    return Comparison(names[0], names[1], metric, seed, sd_x, sd_y, detectable(sd_x, sd_y, min(len(x), len(y))),
                      seeds_needed_range(seed.estimate, sd_x, sd_y, len(x), len(y)), image)
