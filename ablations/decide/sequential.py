"""Seeds added until decided: a group-sequential rule over planned looks (e.g. 3, 5, 8, 12 seeds per arm).

Looking at the verdicts after every few seeds and stopping when they decide would, with the fixed rule's 0.05 at
every look, decide a true null far more often than 5 % (each look is another chance). So each look decides at its
own **nominal level**, an alpha-spending boundary of the Wang-Tsiatis shape (``shape`` 0.5: Pocock, equal levels;
0: O'Brien-Fleming, little spent early) whose constant is **chosen by simulation** (``boundary``): normal seeds,
Welch at every look, the constant set so the whole procedure decides a true null at most alpha / m of the time,
for every family size m. The family's tests are Holm-adjusted as in the report, and the adjusted p of a test is
compared with the look's level for the family, ``nominal_levels``: at the first true null Holm rejects, its raw p
lies below the level / m0 (m0 true nulls), which the boundary keeps below alpha / m0 over all looks, so summed over
the true nulls the family-wise rate stays at alpha under any dependence between the tests (up to the simulation's
error, which the boundary's order statistic leaves on the safe side).

Each look decides every expectation with the report's own functions (verdicts.expectations: Welch or one-sample
t, floors, guards, Holm over the family, TOST for `equivalent`), re-decided at the look's level (stats.decide with
the adjusted p scaled to that level). A decision, once made, is kept (and the look that made it). Seeds go only to
the arms of tests still undecided, each brought to the next look's count, the arm whose next seed narrows a CI most
first; the procedure stops when every expectation is decided (or guarded) or the last look is spent.

Nothing is stored: the look reached follows from the seeds present. Look j uses each arm's first
min(seeds present, seeds at look j) seeds in seed order, so replaying the looks from the evidence gives the same
decisions and the same next seeds every time (``next_look``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import stats as sps

from vlm_core.errors import UserError

from ablations.decide import verdicts
from ablations.decide.expectations import EVERY_WORKING, Check
from ablations.decide.stats import ALPHA, Interval, decide
from ablations.report.collect import TableRuns

LOOKS = (3, 5, 8, 12)
SHAPE = 0.25  # between Pocock (0.5) and O'Brien-Fleming (0); benchmarks/sequential_rates.py compares them
PATHS = 200_000  # simulated tables per scenario when choosing the boundary
GUARDS = ("seeds disagree", "confounded")  # more seeds decide nothing there: the procedure stops


@dataclass(frozen=True)
class Plan:
    """Planned looks (seeds per arm), capped by ``max_seeds`` (the cap is the last look; a cap above the last planned
    look changes nothing: more looks are planned in ``looks``), and the boundary's shape."""

    looks: tuple[int, ...] = LOOKS
    max_seeds: int = LOOKS[-1]
    shape: float = SHAPE
    alpha: float = ALPHA

    def schedule(self) -> tuple[int, ...]:
        looks = tuple(sorted(set(self.looks)))
        if not looks or looks[0] < 2:
            raise UserError(f"sequential plan: looks {self.looks!r} must start at 2 seeds or more (a t-test needs 2)")
        if self.max_seeds < looks[0]:
            raise UserError(f"--max-seeds {self.max_seeds}: below the first look ({looks[0]} seeds per arm)")
        if not 0 <= self.shape <= 0.5:
            raise UserError(f"sequential plan: shape {self.shape!r} must lie in [0, 0.5] (0: O'Brien-Fleming, 0.5: Pocock)")
        kept = tuple(n for n in looks if n < self.max_seeds)
        return kept + (min(self.max_seeds, looks[-1]),) if looks[-1] >= self.max_seeds or not kept else looks


# ---- the boundary, by simulation
def welch_p(mean_x, var_x, n_x, mean_y, var_y, n_y) -> np.ndarray:
    """Two-sided Welch p from each side's mean, variance (ddof 1) and seed count, vectorised (stats.welch per table;
    tests/test_sequential.py checks the two agree). NaN where there is no spread."""
    vx, vy = var_x / n_x, var_y / n_y
    se = np.sqrt(vx + vy)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (vx + vy) ** 2 / (vx**2 / (n_x - 1) + vy**2 / (n_y - 1))
        p = 2 * sps.t.sf(np.abs(mean_x - mean_y) / se, df)
    return np.where(se > 0, p, np.nan)


def _path_statistic(schedule: tuple[int, ...], shape: float, sd_ratio: float, seed: int) -> np.ndarray:
    """Per simulated null table (normal seeds, one side's SD ``sd_ratio`` times the other's): the largest
    z(p_j) * t_j^(0.5 - shape) over the looks (t_j = seeds_j / seeds at the last look). The procedure decides the
    table exactly when this exceeds the boundary's constant."""
    rng = np.random.default_rng(seed)
    last = schedule[-1]
    x, y = rng.normal(0, sd_ratio, (PATHS, last)), rng.normal(0, 1, (PATHS, last))
    out = np.full(PATHS, -np.inf)
    for n in schedule:
        p = welch_p(x[:, :n].mean(1), x[:, :n].var(1, ddof=1), n, y[:, :n].mean(1), y[:, :n].var(1, ddof=1), n)
        out = np.maximum(out, sps.norm.isf(p / 2) * (n / last) ** (0.5 - shape))
    return np.sort(out)[::-1]


@functools.lru_cache(maxsize=16)
def _statistics(schedule: tuple[int, ...], shape: float) -> tuple[np.ndarray, ...]:
    """Welch's two normal cases that matter for its rate: equal SDs (it runs below nominal) and one side's SD nine
    times the other's (it runs above: benchmarks/verdict_rates.py)."""
    return tuple(_path_statistic(schedule, shape, r, seed) for r, seed in ((1.0, 11), (9.0, 12)))


def boundary(schedule: tuple[int, ...], shape: float, level: float) -> float:
    """The constant C (z scale) that the procedure on one comparison crosses under the null at most ``level`` of
    the time in each simulated case: an order statistic at the binomial 5 % point, so that Monte Carlo error leaves
    the rate below ``level`` rather than around it."""
    allowed = int(sps.binom.ppf(0.05, PATHS, level))  # tables allowed above C
    return float(max(s[allowed] for s in _statistics(tuple(schedule), float(shape))))


def single_levels(schedule: tuple[int, ...], shape: float, level: float) -> np.ndarray:
    """Two-sided nominal p levels per look for one comparison whose whole sequence has rate ``level``."""
    c = boundary(schedule, shape, level)
    t = np.asarray(schedule, float) / schedule[-1]
    return 2 * sps.norm.sf(c * t ** (shape - 0.5))


def nominal_levels(plan: Plan, family: int) -> tuple[float, ...]:
    """The level each look compares a Holm-adjusted p with, for a family of ``family`` tests (Holm groups): the
    least over m0 = 1..family of m0 * (one comparison's levels at alpha / m0), so that with any m0 true nulls each
    faces at most its alpha / m0 boundary."""
    schedule = plan.schedule()
    family = max(1, family)
    return tuple(np.min([m0 * single_levels(schedule, plan.shape, plan.alpha / m0) for m0 in range(1, family + 1)],
                        axis=0).tolist())


# ---- one look
@dataclass
class Question:
    """One expectation of one variant at a look: its tests (Holm-adjusted with the family), the arms (variants)
    each test compares, and each arm's seed SD (at least its floor) and seed count on the test's quantity."""

    key: str  # "variant: expectation"
    equivalence: bool
    tests: list[verdicts.Test]
    arms: list[tuple[str, ...]]
    spread: list[dict[str, tuple[float, int]]]
    verdict: verdicts.Verdict | None = None  # the report's verdict it came from (its tests are ``tests``)


@dataclass
class TestRow:
    question: str
    label: str
    side: str
    estimate: float
    low: float
    high: float
    p_adjusted: float
    decision: str
    decided_at: int | None  # the look that decided it (kept since), None while undecided


@dataclass
class Look:
    """What one look saw and decided: a report section prints one of these per look. ``replay`` also sets
    ``look.questions``, the questions as decided at this look (the report's verdict lines); an attribute, not a
    field, so that comparing and converting looks (dataclasses.asdict) sees only the numbers above."""

    index: int
    seeds: dict[str, int]  # seeds per arm used at this look
    family: int  # Holm groups in the family
    level: float  # the nominal level adjusted p-values are compared with
    rows: list[TestRow]
    words: dict[str, tuple[str, int | None]]  # question -> (verdict, look that decided it)


@dataclass
class LookResult:
    look_index: int  # the last look the seeds present reach; -1 before the first
    verdicts: dict[str, str]  # every expectation's verdict so far ('inconclusive' while undecided)
    decided: dict[str, int]  # decided (or guarded) expectations -> the look that decided them
    seeds_to_add: dict[str, int]  # arm -> seeds to add for the next look, the most useful arm first
    done: bool
    reason: str  # why it stopped ('every expectation decided', 'budget spent: ...') or what it waits for
    looks: list[Look] = field(default_factory=list)
    schedule: tuple[int, ...] = ()


def test_key(q: Question, t: verdicts.Test) -> tuple[str, str, str]:
    return q.key, t.label, t.side


def family_size(questions: list[Question]) -> int:
    """Holm groups among the live (unguarded) tests, as stats.holm counts them."""
    live = [t for q in questions for t in q.tests if not t.guard]
    return len({("pair", t.group) if t.group is not None else ("test", k) for k, t in enumerate(live)})


def redecide(t: verdicts.Test, level: float) -> str:
    """The report's decision of a test at ``level`` instead of 0.05: stats.decide compares the adjusted p with
    ALPHA, so the p is scaled by ALPHA / level (the same comparison, the same side rules)."""
    if t.guard:
        return t.decision
    return decide(t.interval, t.bound, t.side, t.p_adjusted * ALPHA / level, t.margin)


def question_word(q: Question) -> str:
    if q.equivalence:
        return verdicts.equivalence_decision(q.tests)
    return verdicts.combine([t.decision for t in q.tests])


def decide_look(questions: list[Question], index: int, level: float, kept: dict, seeds: dict[str, int]) -> Look:
    """Decide every question at ``level``; ``kept`` (updated) holds decisions of earlier looks: test key ->
    (decision, look) and question key -> (word, look). A decided question keeps its word."""
    rows, words = [], {}
    for q in questions:
        if q.key in kept:  # decided earlier: its tests stay as they were decided
            for t in q.tests:
                t.decision = kept.get(test_key(q, t), (t.decision if t.guard else "inconclusive", None))[0]
            words[q.key] = kept[q.key]
        else:
            for t in q.tests:
                old = kept.get(test_key(q, t))
                t.decision = old[0] if old else redecide(t, level)
                if not old and t.decision in ("held", "not held"):
                    kept[test_key(q, t)] = (t.decision, index)
            word = question_word(q)
            if word != "inconclusive":
                kept[q.key] = (word, index)
            words[q.key] = kept.get(q.key, (word, None))
        for t in q.tests:
            i: Interval = t.interval
            rows.append(TestRow(q.key, t.label, t.side, i.estimate, i.low, i.high, t.p_adjusted, t.decision,
                                kept.get(test_key(q, t), (None, None))[1]))
    return Look(index, dict(seeds), family_size(questions), level, rows, words)


def undecided_arms(questions: list[Question], look: Look) -> dict[str, float]:
    """Arms of the tests still undecided in undecided questions -> how much the arm's next seed narrows the CI it
    narrows most (its share of that test's squared SE: s^2 / (n (n + 1)) over the sum of s^2 / n)."""
    out: dict[str, float] = {}
    for q in questions:
        if look.words[q.key][0] != "inconclusive":
            continue
        for t, arms, spread in zip(q.tests, q.arms, q.spread):
            if t.guard or t.decision != "inconclusive":
                continue
            se2 = sum(s**2 / n for s, n in spread.values() if n > 0 and not math.isnan(s))
            for a in arms:
                s, n = spread.get(a, (float("nan"), 0))
                gain = (s**2 / (n * (n + 1)) / se2) if n > 0 and se2 > 0 and not math.isnan(s) else math.inf
                out[a] = max(out.get(a, -math.inf), gain)
    return out


def replay(build: Callable[[dict[str, int]], list[Question]], present: dict[str, int], plan: Plan,
           arms: set[str]) -> LookResult:
    """The looks the seeds present reach, replayed from the first: ``build`` gives the questions on each arm's first
    n seeds (already Holm-adjusted as a family); ``present``: seeds per variant; ``arms``: every variant the
    expectations compare (all need the first look's seeds)."""
    schedule = plan.schedule()
    first = {a: schedule[0] - present.get(a, 0) for a in sorted(arms) if present.get(a, 0) < schedule[0]}
    if first:
        return LookResult(-1, {}, {}, first, False, f"waiting for {schedule[0]} seeds per arm (the first look)",
                          [], schedule)
    kept: dict = {}
    looks: list[Look] = []
    for j, n_look in enumerate(schedule):
        seeds = {a: min(n, n_look) for a, n in present.items()}
        questions = build(seeds)
        level = nominal_levels(plan, family_size(questions))[j]
        look = decide_look(questions, j, level, kept, {a: seeds[a] for a in sorted(arms) if a in seeds})
        look.questions = questions
        looks.append(look)
        words = {k: w for k, (w, _) in look.words.items()}
        decided = {k: at for k, (w, at) in look.words.items() if w != "inconclusive"}
        need = undecided_arms(questions, look)
        if not need:
            return LookResult(j, words, decided, {}, True, "every expectation decided", looks, schedule)
        if j == len(schedule) - 1:
            return LookResult(j, words, decided, {}, True, f"budget spent: {n_look} seeds per arm", looks, schedule)
        target = schedule[j + 1]
        order = sorted(need, key=lambda a: (-need[a], a))
        add = {a: target - present.get(a, 0) for a in order if present.get(a, 0) < target}
        if add:
            return LookResult(j, words, decided, add, False, f"look {j + 2} needs {target} seeds per undecided arm",
                              looks, schedule)
    raise AssertionError("unreachable: the last look returns")


# ---- the table's evidence
def restrict(table_runs: TableRuns, seeds: dict[str, int]) -> TableRuns:
    """The runs of each variant's first ``seeds[variant]`` seeds (seed order); variants not named keep theirs."""
    keep = {}
    for v, group in table_runs.runs.groupby("variant", sort=False):
        ids = sorted(group["seed"])
        keep[v] = set(ids[: seeds.get(v, len(ids))])
    mask = [s in keep.get(v, ()) for v, s in zip(table_runs.runs["variant"], table_runs.runs["seed"])]

    def per_seed(d: dict) -> dict:
        return {v: {s: f for s, f in by_seed.items() if s in keep.get(v, ())} for v, by_seed in d.items()}

    prov = table_runs.provenance
    if not prov.empty:
        prov = prov[[s in keep.get(v, ()) for v, s in zip(prov["variant"], prov["seed"])]]
    per_image = per_seed(table_runs.per_image)
    return dataclasses.replace(
        table_runs, runs=table_runs.runs[mask].reset_index(drop=True), per_image=per_image,
        captions=per_seed(table_runs.captions), attention_maps=per_seed(table_runs.attention_maps), provenance=prov,
        order=[v for v in table_runs.order if per_image.get(v)], comparisons={})


def _partner(t: verdicts.Test, variant: str, c: Check, names: list[str], reference: str) -> tuple[str, ...]:
    """The arms a test compares: the variant alone against a number, else the variant and the one its label names
    last ("Δ<quantity> <variant> − <other>", as verdicts builds every two-sided label)."""
    if c.against_number:
        return (variant,)
    named = [o for o in names if t.label.endswith(f" − {o}")]
    if named:
        return variant, max(named, key=len)
    return variant, reference if c.vs is None or c.vs == EVERY_WORKING else str(c.vs)


def _spread(table_runs: TableRuns, arm: str, quantity: str) -> tuple[float, int]:
    values, floor = verdicts.seed_values(table_runs, arm, quantity)
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    return verdicts._spread(values, floor), len(values)  # the report's own rule: the runs' SD, never below the floor


def questions(table_runs: TableRuns) -> list[Question]:
    """The report's expectations family (verdicts.expectations: its tests, guards and Holm-adjusted p), each test
    with the arms it compares and their spread."""
    out = []
    for v in verdicts.expectations(table_runs):
        if v.rule is None or not v.tests:
            continue
        arms, spread = [], []
        for c in v.rule.checks:  # the same tests again, check by check, to know which check (quantity) each is
            for t in verdicts.check_tests(table_runs, v.variant, c):
                a = _partner(t, v.variant, c, list(table_runs.table.variants), table_runs.table.reference)
                arms.append(a)
                spread.append({x: _spread(table_runs, x, c.quantity) for x in a})
        if len(arms) != len(v.tests):
            raise AssertionError(f"{v.variant}: {v.expectation}: tests per check do not add up to the verdict's tests")
        out.append(Question(f"{v.variant}: {v.expectation}", v.rule.equivalence is not None, v.tests, arms, spread, v))
    return out


def expectation_arms(table_runs: TableRuns) -> set[str]:
    """Every variant an expectation of the table compares (the floor: every other non-budget variant)."""
    table, out = table_runs.table, set()
    rows = [n for n, v in table.variants.items() if not v.is_budget_row]
    for name, v in table.variants.items():
        if v.is_budget_row:
            continue
        for e in v.expectations or []:
            out.add(name)
            for c in e.checks:
                if c.vs is None:
                    out.add(table.reference)
                elif c.vs == EVERY_WORKING:
                    out.update(rows)
                elif isinstance(c.vs, str):
                    out.add(c.vs)
    return out


def next_look(table_runs: TableRuns, plan: Plan = Plan()) -> LookResult:
    """Where the sequential procedure stands on the evidence present, and which seeds it wants next."""
    present = table_runs.runs.groupby("variant")["seed"].nunique().to_dict() if not table_runs.runs.empty else {}
    return replay(lambda n: questions(restrict(table_runs, n)), present, plan, expectation_arms(table_runs))


def next_seeds(table_runs: TableRuns, variant: str, count: int) -> list[int]:
    """Seed numbers for ``count`` new runs of ``variant``: the next ones after every seed the table has used
    (a later look then takes them after the earlier ones, in seed order)."""
    used = set(table_runs.table.all_seeds)
    if not table_runs.runs.empty:
        used |= {int(s) for s in table_runs.runs["seed"]}
    start = max(used, default=-1) + 1
    return list(range(start, start + count))


# ---- what a report section prints
def _num(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def markdown(result: LookResult) -> str:
    """Each look: seeds per arm, the nominal level, every test's Δ, CI, adjusted p and decision; then the end."""
    lines = [f"Looks planned at {', '.join(map(str, result.schedule))} seeds per arm; each look decides at its own "
             "nominal level (Holm-adjusted p below it), chosen by simulation so the whole sequence errs at most 5 %."]
    for look in result.looks:
        seeds = ", ".join(f"{a} {n}" for a, n in look.seeds.items())
        lines += ["", f"**Look {look.index + 1}** ({seeds}; family of {look.family}, level {look.level:.4g})", "",
                  "| expectation | test | Δ or mean | CI | Holm p | decision |", "|---|---|---|---|---|---|"]
        for r in look.rows:
            at = f" (look {r.decided_at + 1})" if r.decided_at is not None and r.decided_at < look.index else ""
            lines.append(f"| {r.question} | {r.label} ({r.side}) | {_num(r.estimate)} | [{_num(r.low)}, "
                         f"{_num(r.high)}] | {_num(r.p_adjusted)} | {r.decision}{at} |")
    lines += ["", f"{'Stopped' if result.done else 'Not finished'}: {result.reason}."]
    if result.seeds_to_add:
        lines.append("Next seeds: " + ", ".join(f"{a} +{n}" for a, n in result.seeds_to_add.items()) + ".")
    return "\n".join(lines)
