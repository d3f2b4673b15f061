"""The error rates of the report's seed-level rule, by simulation: many synthetic tables at once
(vectorised, no training), so a test can check them in a second and benchmarks/verdict_rates.py can
print them with their Monte Carlo error.

Every table is decided by the report's own functions, not a copy of them (issue 50: a copy of Welch here let three
mutations of the decision code pass every test): stats.welch_many / one_sample_many (the Welch and one-sample t
cores behind stats.welch and stats.one_sample, each side's SD floored), stats.holm (vectorised over tables),
stats.decide_many (behind stats.decide) and budgets.adjusted_p (the budget section's family). The rule: decided at
p < 0.05 (Holm-adjusted within a family), and not decided at all when a variant's seeds disagree in kind (some
collapsed, some not).
"""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

from ablations.decide import stats
from ablations.decide.stats import decide_many, holm, one_sample_many, welch_many

ALPHA = stats.ALPHA


def welch_p(x: np.ndarray, y: np.ndarray, floor_x: float = 0.0, floor_y: float = 0.0) -> np.ndarray:
    """Two-sided Welch p per table (stats.welch_many); x: tables x seeds, y: tables x seeds. NaN where the SE is 0."""
    return welch_many(x, y, floor_x, floor_y).p


def decided(intervals: stats.Intervals, p: np.ndarray | None = None, bound: float = 0.0) -> np.ndarray:
    """Which tables the report's rule decides either way (stats.decide_many), on ``p`` (Holm-adjusted) or the
    intervals' own p."""
    i = intervals
    return decide_many(i.estimate, i.low, i.high, i.p if p is None else p, bound, "below") != "inconclusive"


def family_decided(intervals: list[stats.Intervals], adjust: bool = True) -> np.ndarray:
    """tables x tests: which tests each table's family decides, on Holm-adjusted p (stats.holm) or each alone."""
    p = np.stack([i.p for i in intervals], axis=1)
    adjusted = holm(p) if adjust else p
    return np.stack([decided(i, adjusted[:, k]) for k, i in enumerate(intervals)], axis=1)


def holm_reject(p: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Holm per row (stats.holm): p is tables x tests; returns which tests each table rejects."""
    return np.nan_to_num(holm(p), nan=1.0) < alpha


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
    w = welch_many(x, y)
    hits = decided(w, w.p * ALPHA / alpha)  # at another level alpha: the same decision on p rescaled
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
    return float(np.mean(decided(welch_many(a, b, floor, floor))))


def one_sample_rate(rng: np.random.Generator, seeds: int, tables: int, shift: float = 0.0, floor: float = 0.0) -> tuple[float, float]:
    """The one-sample rule (stats.one_sample_many: a mean over seeds against a number, e.g. a swap rate against
    0.9) on normal seeds (SD 1) whose true mean is ``shift`` from the number: decided either way (a false positive
    at shift 0)."""
    return rate(decided(one_sample_many(rng.normal(shift, 1, (tables, seeds)), 0.0, floor)))


def budget_family(rng: np.random.Generator, tables: int, seeds: int = 3, budgets: int = 4, ablations: int = 2,
                  quantities: int = 2, adjust: bool = True) -> tuple[float, float]:
    """Family-wise rate of the budget section under the null: every ablation against one shared reference
    per budget and quantity, the section's family adjusted by budgets.adjusted_p (the report's); is any cell
    decided?"""
    from ablations.decide import budgets as section  # (the report's budget section; imported when simulated)

    cells = []
    for _ in range(budgets):
        for _ in range(quantities):
            ref = rng.normal(0, 1, (tables, seeds))
            cells += [welch_many(rng.normal(0, 1, (tables, seeds)), ref) for _ in range(ablations)]
    p = np.stack([c.p for c in cells], axis=1)
    adjusted = section.adjusted_p(p) if adjust else p
    hits = np.stack([decided(c, adjusted[:, k]) for k, c in enumerate(cells)], axis=1)
    return rate(hits.any(axis=1))


def power_in_family(rng: np.random.Generator, tables: int, family: int, seeds: int = 5, shift: float = 4.0) -> tuple[float, float]:
    """Power of one shifted comparison when it is Holm-adjusted with ``family`` - 1 null ones: the price."""
    tests = [welch_many(rng.normal(-shift, 1, (tables, seeds)), rng.normal(0, 1, (tables, seeds)))]
    tests += [welch_many(rng.normal(0, 1, (tables, seeds)), rng.normal(0, 1, (tables, seeds))) for _ in range(family - 1)]
    return rate(family_decided(tests)[:, 0])


def paired_p(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided paired t over seeds (seed k of x with seed k of y); NaN where the differences have no spread."""
    d = x - y
    sd = d.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.abs(d.mean(axis=1)) / (sd / np.sqrt(d.shape[1]))
        p = 2 * sps.t.sf(t, d.shape[1] - 1)
    return np.where(sd > 0, p, np.nan)


def pairing_rates(rng: np.random.Generator, tables: int, seeds: int, rho: float, shift: float) -> dict:
    """Share decided by a paired t and by Welch when seed k of the variant and of the reference correlate with
    ``rho`` (shared data order and caption sampling) and the variant is ``shift`` seed SDs lower."""
    z = rng.normal(0, 1, (tables, seeds))
    x = -shift + rho**0.5 * z + (1 - rho) ** 0.5 * rng.normal(0, 1, (tables, seeds))
    y = rho**0.5 * z + (1 - rho) ** 0.5 * rng.normal(0, 1, (tables, seeds))
    return {"paired": rate(np.nan_to_num(paired_p(x, y), nan=1.0) < ALPHA), "welch": rate(decided(welch_many(x, y)))}



def equivalence_rates(rng: np.random.Generator, tables: int, seeds: int, shift: float, margin: float) -> dict:
    """The equivalence rule as the report applies it, on simulated tables: normal seeds (SD 1) on both sides, the
    variant ``shift`` SDs from the reference, margin ±``margin`` SDs. Each table is decided by the report's own
    functions (verdicts.equivalence_tests -> decide_family -> equivalence_decision; its two tests alone in their
    family, so within a larger family the rates can only fall). Returns the share called 'equivalent' (a false
    equivalence when |shift| >= margin, power when shift = 0) and the share called 'differs', with their Monte
    Carlo SEs."""
    from ablations.decide import verdicts  # the report's functions (imported here: this module stays light)

    x, y = rng.normal(shift, 1, (tables, seeds)), rng.normal(0, 1, (tables, seeds))
    words = np.array([verdicts.equivalence_decision(verdicts.decide_family(verdicts.equivalence_tests(a, b, margin, "Δ")))
                      for a, b in zip(x, y)])
    return {"equivalent": rate(words == "equivalent"), "differs": rate(words == "differs")}
