"""The sequential rule's error rates, power and seeds used, by simulation (benchmarks/sequential_rates.py prints
them; tests/test_sequential.py checks them).

Two ways to run the rule on synthetic tables (seeds x arms, no training):
- ``replay_table``: one table at a time through the rule itself (sequential.replay), its tests built by the
  report's functions (stats.welch, verdicts.equivalence_tests, verdicts.decide_family): slow, exact;
- ``simulate``: every table at once (numpy), the same rule written for arrays, so the battery runs in a minute.
A test checks that the two give the same decisions and the same seeds on the same tables.

A simulated family is a list of ``Claim``: arm ``a`` against arm ``b`` (Welch) in a direction, or equivalent within
±margin (TOST and the difference test, one Holm group). No floors (they only widen CIs); the "seeds disagree"
guard from a per-seed collapse indicator, when given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from ablations.decide import sequential, verdicts
from ablations.decide.stats import ALPHA, welch


@dataclass(frozen=True)
class Claim:
    a: str
    b: str
    side: str  # 'below' / 'above' (a - b), or 'equivalent'
    margin: float | None = None

    @property
    def key(self) -> str:
        return f"{self.a} {self.side} {self.b}"


# ---- one table through the rule itself
def _guard(collapsed: dict[str, np.ndarray] | None, arms: tuple[str, ...], n: dict[str, int]) -> str | None:
    for a in arms:
        if collapsed is not None and a in collapsed:
            c = collapsed[a][: n[a]]
            if c.any() and not c.all():
                return f"seeds disagree: some {a} runs collapsed and some did not"
    return None


def table_questions(data: dict[str, np.ndarray], claims: list[Claim], n: dict[str, int],
                    collapsed: dict[str, np.ndarray] | None = None) -> list[sequential.Question]:
    """The family on each arm's first n[arm] seeds, built and Holm-adjusted by the report's own functions."""
    out = []
    for c in claims:
        x, y = data[c.a][: n[c.a]], data[c.b][: n[c.b]]
        guard = _guard(collapsed, (c.a, c.b), n)
        label = f"Δ {c.a} − {c.b}"
        if c.side == "equivalent":
            tests = verdicts.equivalence_tests(x, y, c.margin, label, guard=guard)
        else:
            tests = [verdicts.Test(label, welch(x, y), 0.0, c.side, guard)]
        spread = {c.a: (float(np.std(x, ddof=1)), len(x)), c.b: (float(np.std(y, ddof=1)), len(y))}
        out.append(sequential.Question(c.key, c.side == "equivalent", tests, [(c.a, c.b)] * len(tests),
                                       [spread] * len(tests)))
    verdicts.decide_family([t for q in out for t in q.tests])
    return out


def replay_table(data: dict[str, np.ndarray], claims: list[Claim], plan: sequential.Plan,
                 collapsed: dict[str, np.ndarray] | None = None) -> sequential.LookResult:
    """The rule run to its end on one synthetic table: seeds are 'trained' (taken from ``data``) as it asks."""
    arms = {x for c in claims for x in (c.a, c.b)}
    present = {a: plan.schedule()[0] for a in arms}
    built: dict = {}  # each look's family is built once, however often the looks are replayed

    def build(n: dict[str, int]) -> list[sequential.Question]:
        key = tuple(sorted(n.items()))
        if key not in built:
            built[key] = table_questions(data, claims, n, collapsed)
        return built[key]

    while True:
        result = sequential.replay(build, present, plan, arms)
        if result.done:
            return result
        for a, k in result.seeds_to_add.items():
            present[a] += k


# ---- every table at once
@dataclass
class Simulated:
    words: dict[str, np.ndarray]  # claim key -> verdict per table ('held', 'not held', 'equivalent', 'differs',
    # 'inconclusive', 'seeds disagree')
    seeds: dict[str, np.ndarray]  # arm -> seeds used per table
    look: np.ndarray  # the look each table stopped at


def _moments(x: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (ddof 1) of each table's first n seeds."""
    rows = np.arange(len(x))
    s1, s2 = np.cumsum(x, 1)[rows, n - 1], np.cumsum(x**2, 1)[rows, n - 1]
    mean = s1 / n
    return mean, np.maximum(s2 - n * mean**2, 0.0) / (n - 1)


def holm_adjusted(p: np.ndarray, groups: list[int], live: np.ndarray) -> np.ndarray:
    """stats.holm per table (rows) over the ``live`` tests only (decide_family leaves guarded ones out), groups
    counting once; an undefined (NaN) p of a live test stays NaN and counts, as there."""
    tables, m = p.shape
    order = np.argsort(np.where(live, np.where(np.isnan(p), np.inf, p), 2 * np.inf), axis=1)
    ranked = np.take_along_axis(p, order, axis=1)
    alive = np.take_along_axis(live, order, axis=1)
    g = np.asarray(groups)[order]
    remaining = np.zeros((tables, m), int)
    seen = {k: np.zeros(tables, bool) for k in set(groups)}
    for r in range(m - 1, -1, -1):  # distinct live groups among the tests ranked r and later
        for k in seen:
            seen[k] |= alive[:, r] & (g[:, r] == k)
        remaining[:, r] = np.sum([seen[k] for k in seen], axis=0)
    out, running = np.full_like(p, np.nan), np.zeros(tables)
    for r in range(m):
        usable = alive[:, r] & ~np.isnan(ranked[:, r])
        step = np.maximum(running, np.minimum(1.0, remaining[:, r] * ranked[:, r]))
        running = np.where(usable, step, running)
        np.put_along_axis(out, order[:, r:r + 1], np.where(usable, running, np.nan)[:, None], axis=1)
    return out


def simulate(data: dict[str, np.ndarray], claims: list[Claim], plan: sequential.Plan,
             collapsed: dict[str, np.ndarray] | None = None) -> Simulated:
    """The rule on every table at once: tables x seeds per arm (at least the last look's seeds)."""
    schedule = plan.schedule()
    tables = len(next(iter(data.values())))
    arms = sorted({x for c in claims for x in (c.a, c.b)})
    count = {a: np.full(tables, schedule[0]) for a in arms}
    # per claim: its tests (kind, group) — directional: one; equivalence: TOST then the difference
    tests = [(k, kind) for k, c in enumerate(claims)
             for kind in (("tost", "diff") if c.side == "equivalent" else ("dir",))]
    groups = [k for k, _ in tests]
    test_dec = np.zeros((tables, len(tests)), int)  # 0 undecided, 1 held, -1 not held (directional on the other side)
    word = {c.key: np.full(tables, "inconclusive", dtype=object) for c in claims}
    stopped = np.zeros(tables, bool)
    look = np.zeros(tables, int)
    for j in range(len(schedule)):
        active = ~stopped
        mom = {a: _moments(data[a], count[a]) for a in arms}
        shape = (tables, len(tests))
        p, est, guard = np.full(shape, np.nan), np.zeros(shape), np.zeros(shape, bool)
        for i, (k, kind) in enumerate(tests):
            c = claims[k]
            (mx, vx), (my, vy), nx, ny = mom[c.a], mom[c.b], count[c.a], count[c.b]
            se2x, se2y = vx / nx, vy / ny
            se = np.sqrt(se2x + se2y)
            with np.errstate(divide="ignore", invalid="ignore"):
                df = (se2x + se2y) ** 2 / (se2x**2 / (nx - 1) + se2y**2 / (ny - 1))
                d = mx - my
                if kind == "tost":
                    q = np.maximum(sps.t.sf((d + c.margin) / se, df), sps.t.cdf((d - c.margin) / se, df))
                else:
                    q = 2 * sps.t.sf(np.abs(d) / se, df)
            p[:, i], est[:, i] = np.where(se > 0, q, np.nan), d
            if collapsed is not None:
                for a in (c.a, c.b):
                    if a in collapsed:
                        seen = np.cumsum(collapsed[a], 1)[np.arange(tables), count[a] - 1]
                        guard[:, i] |= (seen > 0) & (seen < count[a])
        live_groups = np.array([len({g for g, gd in zip(groups, row) if not gd}) for row in guard.tolist()])
        levels = {m: sequential.nominal_levels(plan, m)[j] for m in set(live_groups.tolist())}
        level = np.array([levels[m] for m in live_groups.tolist()])
        padj = holm_adjusted(p, groups, ~guard)
        ok = (padj < level[:, None]) & ~guard
        for i, (k, kind) in enumerate(tests):
            c = claims[k]
            new = active & (test_dec[:, i] == 0) & (word[c.key] == "inconclusive") & ok[:, i]
            if kind == "dir":
                on_side = (est[:, i] < 0) if c.side == "below" else (est[:, i] > 0)
                test_dec[:, i] = np.where(new, np.where(on_side, 1, -1), test_dec[:, i])
            else:
                test_dec[:, i] = np.where(new, 1, test_dec[:, i])
        need = {a: np.zeros(tables, bool) for a in arms}
        for k, c in enumerate(claims):
            idx = [i for i, (kk, _) in enumerate(tests) if kk == k]
            open_ = active & (word[c.key] == "inconclusive")
            g = guard[:, idx].any(1)
            if c.side == "equivalent":
                w = np.where(test_dec[:, idx[0]] == 1, "equivalent",
                             np.where(test_dec[:, idx[1]] == 1, "differs", "inconclusive"))
            else:
                w = np.where(test_dec[:, idx[0]] == 1, "held",
                             np.where(test_dec[:, idx[0]] == -1, "not held", "inconclusive"))
            w = np.where(g & (w == "inconclusive"), "seeds disagree", w)
            word[c.key] = np.where(open_, w, word[c.key])
            still = open_ & (word[c.key] == "inconclusive")
            for a in (c.a, c.b):
                need[a] |= still
        any_need = np.any([need[a] for a in arms], axis=0)
        look = np.where(active, j, look)
        stopped |= active & ~any_need
        if j + 1 < len(schedule):
            for a in arms:
                count[a] = np.where(~stopped & need[a], np.maximum(count[a], schedule[j + 1]), count[a])
    return Simulated(word, count, look)


# ---- the battery's cases
def null_data(case: str, tables: int, seeds: int, rng: np.random.Generator) -> tuple[dict, dict | None]:
    """Two arms with the same mean: 'normal', 'sd-ratio-9' (x's SD 9 times y's), 'lognormal' (x lognormal, y
    normal, same mean and SD), 'bimodal' (x collapses in 20 % of runs, y tight; the guard sees the collapses)."""
    if case == "normal":
        return {"x": rng.normal(0, 1, (tables, seeds)), "y": rng.normal(0, 1, (tables, seeds))}, None
    if case == "sd-ratio-9":
        return {"x": rng.normal(0, 9, (tables, seeds)), "y": rng.normal(0, 1, (tables, seeds))}, None
    if case == "lognormal":
        mean, sd = np.exp(0.5), np.sqrt((np.e - 1) * np.e)
        return {"x": rng.lognormal(0, 1, (tables, seeds)), "y": rng.normal(mean, sd, (tables, seeds))}, None
    if case == "bimodal":
        c = rng.random((tables, seeds)) < 0.2
        x = np.where(c, 0.0, 1.25) + rng.normal(0, 0.05, (tables, seeds))
        return {"x": x, "y": rng.normal(1.0, 0.05, (tables, seeds))}, {"x": c}
    raise ValueError(case)


def fixed_decided(x: np.ndarray, y: np.ndarray, side: str | None = None) -> np.ndarray:
    """The fixed rule on every table (Welch at 0.05 on all the seeds given); with ``side``, decided on that side."""
    (mx, vx), (my, vy) = (_moments(v, np.full(len(v), v.shape[1])) for v in (x, y))
    n = x.shape[1]
    p = np.nan_to_num(sequential.welch_p(mx, vx, n, my, vy, n), nan=1.0)
    hit = p < ALPHA
    return hit if side is None else hit & ((mx < my) if side == "below" else (mx > my))


def fixed_equivalent(x: np.ndarray, y: np.ndarray, margin: float) -> np.ndarray:
    """The fixed rule's TOST at 0.05 on all the seeds given (the equivalence check alone in its family)."""
    (mx, vx), (my, vy) = (_moments(v, np.full(len(v), v.shape[1])) for v in (x, y))
    n = x.shape[1]
    se = np.sqrt(vx / n + vy / n)
    df = (vx / n + vy / n) ** 2 / ((vx / n) ** 2 / (n - 1) + (vy / n) ** 2 / (n - 1))
    d = mx - my
    return np.maximum(sps.t.sf((d + margin) / se, df), sps.t.cdf((d - margin) / se, df)) < ALPHA
