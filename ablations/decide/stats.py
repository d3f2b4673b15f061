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
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05


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


@dataclass
class Intervals:
    """Many intervals at once (one per simulated table, or one): what ``welch_many`` / ``one_sample_many`` return.
    The report's scalar functions take element [()] of these, so the simulations (rule_rates.py, power.py) run the
    very code the report decides with."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p: np.ndarray
    se: np.ndarray
    df: np.ndarray

    def one(self, n: int) -> Interval:
        return Interval(float(self.estimate), float(self.low), float(self.high), float(self.p), n)


def _moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, seed variance, seeds) over the last axis."""
    v = np.asarray(values, float)
    return v.mean(axis=-1), v.var(axis=-1, ddof=1), v.shape[-1]


def welch_moments(mean_x, var_x, n_x: int, mean_y, var_y, n_y: int, floor_x: float = 0.0,
                  floor_y: float = 0.0) -> Intervals:
    """mean_x - mean_y with Welch's 95% CI and two-sided p, from each side's mean, seed variance and seeds
    (arrays, one per table). Each side's seed variance is at least its floor squared (the floor is an SD). No
    spread (up to rounding) gives a point CI and p = NaN, or 1 at a zero difference: it decides nothing alone."""
    mean_x, mean_y = np.asarray(mean_x, float), np.asarray(mean_y, float)
    vx = np.maximum(var_x, floor_x**2) / n_x
    vy = np.maximum(var_y, floor_y**2) / n_y
    se = np.sqrt(vx + vy)
    diff = mean_x - mean_y
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (vx + vy) ** 2 / (vx**2 / (n_x - 1) + vy**2 / (n_y - 1))
        half = stats.t.ppf(1 - ALPHA / 2, df) * se
        p = 2 * stats.t.sf(np.abs(diff) / se, df)
    spread = se > 1e-12 * np.maximum(1.0, np.abs(mean_y))
    return Intervals(diff, np.where(spread, diff - half, diff), np.where(spread, diff + half, diff),
                     np.where(spread, p, np.where(diff == 0, 1.0, np.nan)), se, df)


def welch_many(x: np.ndarray, y: np.ndarray, floor_x: float = 0.0, floor_y: float = 0.0) -> Intervals:
    """``welch_moments`` on per-seed values, seeds on the last axis (at least 2 a side)."""
    (mx, vx, nx), (my, vy, ny) = _moments(x), _moments(y)
    return welch_moments(mx, vx, nx, my, vy, ny, floor_x, floor_y)


def welch(x: np.ndarray, y: np.ndarray, floor_x: float = 0.0, floor_y: float = 0.0) -> Interval:
    """mean(x) - mean(y) with a Welch 95% CI and p; each side's seed SD is at least its ``floor`` (the SE a
    run's mean has from its images alone). Zero spread and no floor gives a point CI and p = NaN
    (undefined, never an invented 0: such an interval decides nothing)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    diff = float(x.mean() - y.mean()) if len(x) and len(y) else float("nan")
    n = min(len(x), len(y))
    if len(x) < 2 or len(y) < 2:
        return Interval(diff, float("nan"), float("nan"), float("nan"), n)
    return welch_many(x, y, floor_x, floor_y).one(n)


def one_sample_se(var, n: int, floor: float = 0.0) -> tuple[np.ndarray, int]:
    """(SE of a mean over ``n`` seeds, its degrees of freedom): the seed SD at least ``floor``; t on n - 1."""
    return np.sqrt(np.maximum(var, floor**2) / n), n - 1


def one_sample_moments(mean, var, n: int, bound: float = 0.0, floor: float = 0.0) -> Intervals:
    """A mean over seeds with its t 95% CI and two-sided p against ``bound``, from mean, seed variance and seeds
    (arrays). No spread: a point CI, p NaN (or 1 when the mean is the bound)."""
    mean = np.asarray(mean, float)
    se, df = one_sample_se(var, n, floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = stats.t.ppf(1 - ALPHA / 2, df) * se
        p = 2 * stats.t.sf(np.abs(mean - bound) / se, df)
    spread = se > 1e-12 * np.maximum(1.0, np.abs(mean))
    return Intervals(mean, np.where(spread, mean - half, mean), np.where(spread, mean + half, mean),
                     np.where(spread, p, np.where(mean == bound, 1.0, np.nan)), se, np.full_like(mean, df))


def one_sample_many(values: np.ndarray, bound: float = 0.0, floor: float = 0.0) -> Intervals:
    mean, var, n = _moments(values)
    return one_sample_moments(mean, var, n, bound, floor)


def tost_moments(diff, se, df, center: float, margin: float) -> Intervals:
    """Two one-sided t tests of |diff - center| < margin at ALPHA each (arrays): the (1 - 2 ALPHA) = 90% CI, and
    p = the larger one-sided p (both must reject; the CI lies inside center ± margin exactly when p < ALPHA).
    Zero SE: p NaN, no test decides on seeds without spread."""
    diff, se = np.asarray(diff, float), np.asarray(se, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = stats.t.ppf(1 - ALPHA, df) * se
        p_low = stats.t.sf((diff - (center - margin)) / se, df)  # H0: diff <= center - margin
        p_high = stats.t.cdf((diff - (center + margin)) / se, df)  # H0: diff >= center + margin
    spread = se > 0
    return Intervals(diff, np.where(spread, diff - half, diff), np.where(spread, diff + half, diff),
                     np.where(spread, np.maximum(p_low, p_high), np.nan), se, np.asarray(df, float))


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
    w = welch_many(x, y, floor_x, floor_y)
    if w.low == w.high:  # no spread (welch_moments' test)
        return Interval(float(w.estimate), float(w.estimate), float(w.estimate), float("nan"), n)
    return tost_moments(w.estimate, w.se, w.df, 0.0, margin).one(n)


def tost_one_sample(values: np.ndarray, center: float, margin: float, floor: float = 0.0) -> Interval:
    """The mean over seeds within ``center`` ± ``margin``: TOST with a one-sample t (seed SD at least ``floor``)."""
    v = np.asarray(values, float)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return Interval(mean, float("nan"), float("nan"), float("nan"), len(v))
    se, df = one_sample_se(v.var(ddof=1), len(v), floor)
    if se <= 1e-12 * max(1.0, abs(mean)):
        return Interval(mean, mean, mean, float("nan"), len(v))
    return tost_moments(mean, se, df, center, margin).one(len(v))


def one_sample(values: np.ndarray, bound: float = 0.0, limits: tuple[float, float] | None = None,
               floor: float = 0.0) -> Interval:
    """Mean over seeds with a t 95% CI, and p against ``bound``; the seed SD is at least ``floor``;
    ``limits`` clips the CI to the values the quantity can take (a rate's CI stays within [0, 1])."""
    v = np.asarray(values, float)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return Interval(mean, float("nan"), float("nan"), float("nan"), len(v))
    i = one_sample_many(v, bound, floor).one(len(v))
    if limits is not None and i.low != i.high:
        i.low, i.high = max(i.low, limits[0]), min(i.high, limits[1])
    return i


DECIDED = ("held", "not held")


def decide_many(estimate, low, high, p, bound: float, side: str, margin: float | None = None,
                adjusted: bool = True) -> np.ndarray:
    """``decide`` on arrays (one per table): 'held' / 'not held' / 'inconclusive' each. ``adjusted``: ``p`` is the
    family-adjusted p that decides (False: the CI against the bound decides, as for a test alone)."""
    estimate, low, high, p = (np.asarray(a, float) for a in (estimate, low, high, p))
    undecidable = np.isnan(low) | np.isnan(high) | (high == low) | np.isnan(p)
    if side in ("equivalent", "differs"):
        if adjusted:
            held = p < ALPHA
        elif side == "equivalent":
            held = (bound - margin < low) & (high < bound + margin)
        else:
            held = (high < bound) | (low > bound)
        return np.where(~undecidable & held, "held", "inconclusive")
    if adjusted:
        go = p < ALPHA
        below, above = go & (estimate < bound), go & (estimate > bound)
    else:
        below, above = high < bound, low > bound
    yes, no = (below, above) if side == "below" else (above, below)
    return np.where(undecidable, "inconclusive", np.where(yes, "held", np.where(no, "not held", "inconclusive")))


def decide(interval: Interval, bound: float, side: str, p: float | None = None, margin: float | None = None) -> str:
    """'held' when the whole CI lies on ``side`` ('below' / 'above') of ``bound``, 'not held' when it
    lies wholly on the other side, else 'inconclusive' (also with fewer than 2 seeds, or an undefined p).
    With ``p`` (a family-adjusted p-value of the same test), decided only when ``p`` < ALPHA, on the side
    of the estimate: the unadjusted rule is the same as p < ALPHA for these t intervals. A zero-width CI (seeds
    without spread and no floor) decides nothing alone.

    Two sides decide only one way ('held' or 'inconclusive'): 'equivalent' (a TOST interval, ``tost``: its CI
    inside ``bound`` ± ``margin``) and 'differs' (a 95% CI that excludes ``bound``)."""
    i = interval
    return str(decide_many(i.estimate, i.low, i.high, i.p if p is None else p, bound, side, margin,
                           adjusted=p is not None)[()])


def holm(pvalues, groups: list | None = None):
    """Holm's step-down adjustment: reject p_adj < ALPHA and the family-wise error rate stays <= ALPHA
    under any dependence between the tests. NaN (an undefined test) stays NaN and counts in the family.
    A list gives a list; an array of tables x tests gives one adjusted row per table (the simulations).

    ``groups``: tests with the same group can never be true nulls together (the two tests of an equivalence check:
    Δ = 0 and |Δ| >= margin exclude each other), so a group counts once among the tests still to be decided
    (Shaffer 1986's logical restriction). At the first true null rejected, every true null is still undecided and
    each sits in a group of its own, so the multiplier is still at least their number and the Bonferroni bound of
    Holm's proof holds. Without groups, each test is its own: plain Holm."""
    p = np.asarray(pvalues, float)
    rows = np.atleast_2d(p)
    tables, m = rows.shape
    if m == 0:
        return [] if p.ndim == 1 else rows.copy()
    names = list(range(m)) if groups is None else list(groups)
    ids = {g: k for k, g in enumerate(dict.fromkeys(names))}
    group = np.array([ids[g] for g in names])
    order = np.argsort(np.where(np.isnan(rows), np.inf, rows), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(m)[None, :].repeat(tables, 0), axis=1)
    last = np.full((tables, len(ids)), -1)  # the last rank each group holds
    for k in range(m):
        last[:, group[k]] = np.maximum(last[:, group[k]], rank[:, k])
    remaining = (last[:, None, :] >= np.arange(m)[None, :, None]).sum(axis=2)  # groups still to decide at each rank
    ranked = np.take_along_axis(rows, order, axis=1)
    running = np.fmax.accumulate(np.minimum(1.0, remaining * ranked), axis=1)  # NaN (sorted last) skipped
    running[np.isnan(ranked)] = np.nan
    out = np.empty_like(running)
    np.put_along_axis(out, order, running, axis=1)
    return out[0].tolist() if p.ndim == 1 else out


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
    image: dict  # paired_difference on per-image values averaged over seeds
    floor_variant: float = 0.0  # the image-level SE each side's seed SD is floored by
    floor_reference: float = 0.0
    n_variant: int = 0
    n_reference: int = 0

    cache: dict = field(default_factory=dict, repr=False, compare=False)  # power.comparison_plan's, per comparison


def compare(variant: pd.DataFrame, reference: pd.DataFrame, names: tuple[str, str] = ("variant", "reference"),
            metric: str = "CIDEr", n_resamples: int = 2000) -> Comparison:
    """``variant`` / ``reference``: per-image values, one column per seed (index = image id)."""
    x, y = variant.mean(axis=0).to_numpy(), reference.mean(axis=0).to_numpy()  # per-seed means (NaN skipped)
    fx, fy = image_floor(variant), image_floor(reference)
    seed = welch(x, y, fx, fy)
    sd_x = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
    sd_y = float(np.std(y, ddof=1)) if len(y) > 1 else float("nan")
    common = variant.index.intersection(reference.index)
    image = paired_difference(variant.loc[common].mean(axis=1).to_numpy(), reference.loc[common].mean(axis=1).to_numpy(),
                              n_resamples=n_resamples)
    return Comparison(names[0], names[1], metric, seed, sd_x, sd_y, image, fx, fy, len(x), len(y))
