"""The error rates of the report's seed-level rule, by simulation: many synthetic tables at once
(vectorised, no training), so a test can check them in a second and benchmarks/verdict_rates.py can
print them with their Monte Carlo error.

The rule (stats.welch + verdicts guards): Welch's t over per-seed means, each side's SD floored by the
image-level SE of a run's mean, decided at p < 0.05 (Holm-adjusted within a family), and not decided at
all when a variant's seeds disagree in kind (some collapsed, some not).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

ALPHA = 0.05


def welch_p(x: np.ndarray, y: np.ndarray, floor_x: float = 0.0, floor_y: float = 0.0) -> np.ndarray:
    """Two-sided Welch p per table; x: tables x seeds, y: tables x seeds. NaN where the SE is 0."""
    n, m = x.shape[1], y.shape[1]
    vx = np.maximum(x.var(axis=1, ddof=1), floor_x**2) / n
    vy = np.maximum(y.var(axis=1, ddof=1), floor_y**2) / m
    se = np.sqrt(vx + vy)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (vx + vy) ** 2 / (vx**2 / (n - 1) + vy**2 / (m - 1))
        t = np.abs(x.mean(axis=1) - y.mean(axis=1)) / se
        p = 2 * stats.t.sf(t, df)
    return np.where(se > 1e-12 * np.maximum(1.0, np.abs(y.mean(axis=1))), p, np.nan)  # no spread: undefined


def decided(p: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    return np.nan_to_num(p, nan=1.0) < alpha


def holm_reject(p: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Holm per row: p is tables x tests; returns which tests each table rejects."""
    p = np.nan_to_num(p, nan=1.0)
    m = p.shape[1]
    order = np.argsort(p, axis=1)
    ranked = np.take_along_axis(p, order, axis=1)
    ok = ranked < alpha / (m - np.arange(m))
    ok = np.cumprod(ok, axis=1).astype(bool)  # step down: stop at the first failure
    out = np.zeros_like(ok)
    np.put_along_axis(out, order, ok, axis=1)
    return out


def rate(hits: np.ndarray) -> tuple[float, float]:
    """Share and its Monte Carlo standard error."""
    r = float(np.mean(hits))
    return r, float(np.sqrt(r * (1 - r) / hits.size))


def scenario(name: str, seeds: int, tables: int, rng: np.random.Generator, alpha: float = ALPHA) -> dict:
    """One scenario's rate of "decided" (a false positive under the null, power under a shift)."""
    if name == "normal":  # (a) equal-variance normal seeds, equal means
        x, y = rng.normal(0, 1, (tables, seeds)), rng.normal(0, 1, (tables, seeds))
    elif name == "sd-ratio-9":  # (b) one side's seed SD nine times the other's
        x, y = rng.normal(0, 9, (tables, seeds)), rng.normal(0, 1, (tables, seeds))
    elif name == "bimodal":  # (c) a variant that collapses in 20 % of its runs vs a tight reference, same mean
        collapsed = rng.random((tables, seeds)) < 0.2
        x = np.where(collapsed, 0.0, 1.25) + rng.normal(0, 0.05, (tables, seeds))
        y = rng.normal(1.0, 0.05, (tables, seeds))
    elif name == "lognormal":  # (d) lognormal (sigma 1) seeds vs normal seeds with the same mean and SD
        x = rng.lognormal(0, 1, (tables, seeds))
        mean, sd = np.exp(0.5), np.sqrt((np.e - 1) * np.e)
        y = rng.normal(mean, sd, (tables, seeds))
    elif name == "shift-4sd":  # power: a four-SD shift under (a)
        x, y = rng.normal(-4, 1, (tables, seeds)), rng.normal(0, 1, (tables, seeds))
    else:
        raise ValueError(name)
    hits = decided(welch_p(x, y), alpha)
    out = {"welch": rate(hits)}
    if name == "bimodal":  # the guard: seeds that disagree in kind decide nothing
        disagree = collapsed.any(axis=1) & ~collapsed.all(axis=1)
        out["guarded"] = rate(hits & ~disagree)
    return out


def zero_spread_decides(rng: np.random.Generator, tables: int = 2000, floor: float = 0.0) -> float:
    """Seeds without spread on both sides (e.g. identically collapsed runs), a small true difference
    (half the floor): how often the rule decides."""
    a = rng.normal(0, 1, (tables, 1)).repeat(3, axis=1)
    b = a + 0.5 * max(floor, 1e-3)
    return float(np.mean(decided(welch_p(a, b, floor, floor))))


def budget_family(rng: np.random.Generator, tables: int, seeds: int = 3, budgets: int = 4, ablations: int = 2,
                  quantities: int = 2, adjust: bool = True, alpha: float = ALPHA) -> tuple[float, float]:
    """Family-wise rate of the budget section under the null: every ablation against one shared reference
    per budget and quantity; is any cell decided?"""
    p = []
    for _ in range(budgets):
        for _ in range(quantities):
            ref = rng.normal(0, 1, (tables, seeds))
            for _ in range(ablations):
                p.append(welch_p(rng.normal(0, 1, (tables, seeds)), ref))
    p = np.stack(p, axis=1)
    any_hit = holm_reject(p, alpha).any(axis=1) if adjust else decided(p, alpha).any(axis=1)
    return rate(any_hit)


def power_in_family(rng: np.random.Generator, tables: int, family: int, seeds: int = 5, shift: float = 4.0,
                    alpha: float = ALPHA) -> tuple[float, float]:
    """Power of one shifted comparison when it is Holm-adjusted with ``family`` - 1 null ones: the price."""
    p = [welch_p(rng.normal(-shift, 1, (tables, seeds)), rng.normal(0, 1, (tables, seeds)))]
    p += [welch_p(rng.normal(0, 1, (tables, seeds)), rng.normal(0, 1, (tables, seeds))) for _ in range(family - 1)]
    return rate(holm_reject(np.stack(p, axis=1), alpha)[:, 0])


def paired_p(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided paired t over seeds (seed k of x with seed k of y); NaN where the differences have no spread."""
    d = x - y
    sd = d.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(d.mean(axis=1)) / (sd / np.sqrt(d.shape[1]))
        p = 2 * stats.t.sf(t, d.shape[1] - 1)
    return np.where(sd > 0, p, np.nan)


def pairing_rates(rng: np.random.Generator, tables: int, seeds: int, rho: float, shift: float) -> dict:
    """Share decided by a paired t and by Welch when seed k of the variant and of the reference correlate with
    ``rho`` (shared data order and caption sampling) and the variant is ``shift`` seed SDs lower."""
    z = rng.normal(0, 1, (tables, seeds))
    x = -shift + rho**0.5 * z + (1 - rho) ** 0.5 * rng.normal(0, 1, (tables, seeds))
    y = rho**0.5 * z + (1 - rho) ** 0.5 * rng.normal(0, 1, (tables, seeds))
    return {"paired": rate(decided(paired_p(x, y))), "welch": rate(decided(welch_p(x, y)))}



def equivalence_rates(rng: np.random.Generator, tables: int, seeds: int, shift: float, margin: float) -> dict:
    """The equivalence rule as the report applies it, on simulated tables: normal seeds (SD 1) on both sides, the
    variant ``shift`` SDs from the reference, margin ±``margin`` SDs. Each table is decided by the report's own
    functions (verdicts.equivalence_tests -> decide_family -> equivalence_decision; its two tests alone in their
    family, so within a larger family the rates can only fall). Returns the share called 'equivalent' (a false
    equivalence when |shift| >= margin, power when shift = 0) and the share called 'differs', with their Monte
    Carlo SEs."""
    from . import verdicts  # the report's functions, not a copy (imported here: this module stays light)

    x, y = rng.normal(shift, 1, (tables, seeds)), rng.normal(0, 1, (tables, seeds))
    words = np.array([verdicts.equivalence_decision(verdicts.decide_family(verdicts.equivalence_tests(a, b, margin, "Δ")))
                      for a, b in zip(x, y)])
    return {"equivalent": rate(words == "equivalent"), "differs": rate(words == "differs")}
