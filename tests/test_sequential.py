"""The sequential rule (ablations/decide/sequential.py): its family-wise rate under the null through the rule's own
functions, the arms it adds seeds to, when it stops, and that the evidence alone says where it stands."""
import dataclasses

import numpy as np
import pytest

from ablations.decide import sequential, sequential_rates
from ablations.decide.sequential_rates import Claim
from ablations.report.collect import collect
from ablations.tables import load_table
from vlm_core.errors import UserError

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN = sequential.Plan()
NULL_FAMILY = [Claim("a", "ref", "below"), Claim("b", "ref", "above")]  # two variants against one reference


def _margin(rate: float, tables: int) -> float:
    return 2 * np.sqrt(rate * (1 - rate) / tables)


def test_the_whole_procedure_keeps_its_family_wise_rate_under_the_null():
    """(a) 1,500 tables of normal seeds through the rule itself (sequential.replay on families built and
    Holm-adjusted by the report's functions), up to 12 seeds: any verdict decided at most 5 % (+ 2 MC SE).
    Replacing the boundary by 0.05 at every look makes this fail (checked by hand: 170 of 1,500, 0.113)."""
    tables = 1500
    rng = np.random.default_rng(20)
    data = {a: rng.normal(0, 1, (tables, PLAN.schedule()[-1])) for a in ("ref", "a", "b")}
    hits = 0
    for k in range(tables):
        result = sequential_rates.replay_table({a: v[k] for a, v in data.items()}, NULL_FAMILY, PLAN)
        hits += any(w != "inconclusive" for w in result.verdicts.values())
    assert hits / tables <= 0.05 + _margin(0.05, tables), hits / tables


@pytest.mark.parametrize("case", ["normal", "sd-ratio-9"])
def test_simulated_rate_holds_and_a_naive_boundary_breaks_it(case, monkeypatch):
    """(a, b) the vectorised rule on 20,000 tables: at most 5 % (+ 2 MC SE) for normal seeds, equal or unequal
    SDs; the same tables with the fixed rule's 0.05 at every look exceed the bound (so the bound can fail)."""
    tables = 20_000
    data, _ = sequential_rates.null_data(case, tables, 12, np.random.default_rng(21))
    claims = [Claim("x", "y", "below")]

    def fwer() -> float:
        sim = sequential_rates.simulate(data, claims, PLAN)
        return float(np.mean(sim.words[claims[0].key] != "inconclusive"))

    bound = 0.05 + _margin(0.05, tables)
    assert fwer() <= bound
    monkeypatch.setattr(sequential, "nominal_levels", lambda plan, m: (0.05,) * len(plan.schedule()))
    assert fwer() > bound


def test_the_vectorised_rule_is_the_rule():
    """The battery's numpy rule gives the same verdicts and seeds as the rule itself (report's functions), table by
    table: with a true shift, a shared reference, an equivalence check and a collapsing arm (the guard)."""
    tables = 120
    rng = np.random.default_rng(22)
    data = {"ref": rng.normal(0, 1, (tables, 12)), "a": rng.normal(-1.2, 1, (tables, 12)),
            "b": rng.normal(0, 2, (tables, 12)), "e": rng.normal(0.3, 1, (tables, 12))}
    collapsed = {"b": rng.random((tables, 12)) < 0.1}
    claims = [Claim("a", "ref", "below"), Claim("b", "ref", "above"), Claim("e", "ref", "equivalent", 1.5)]
    sim = sequential_rates.simulate(data, claims, PLAN, collapsed)
    words = set()
    for k in range(tables):
        one = sequential_rates.replay_table({a: v[k] for a, v in data.items()}, claims, PLAN,
                                            {a: v[k] for a, v in collapsed.items()})
        for c in claims:
            assert one.verdicts[c.key] == sim.words[c.key][k], (k, c.key)
            words.add(one.verdicts[c.key])
        assert {a: one.looks[-1].seeds[a] for a in data} == {a: int(sim.seeds[a][k]) for a in data}, k
    assert {"held", "inconclusive", "seeds disagree", "equivalent"} <= words  # every path was exercised


def test_welch_p_vectorised_is_stats_welch():
    from ablations.decide.stats import welch
    rng = np.random.default_rng(23)
    x, y = rng.normal(0, 1, (50, 4)), rng.normal(0.5, 3, (50, 6))
    p = sequential.welch_p(x.mean(1), x.var(1, ddof=1), 4, y.mean(1), y.var(1, ddof=1), 6)
    assert p == pytest.approx([welch(a, b).p for a, b in zip(x, y)], rel=1e-9)


# ---- (c) which arms get seeds, and when it stops
def _table(**arms):
    """One synthetic table: arm -> its 12 seed values."""
    return {a: np.asarray(v, float) for a, v in arms.items()}


def _replay(data, claims, present, plan=PLAN):
    return sequential.replay(lambda n: sequential_rates.table_questions(data, claims, n), present, plan,
                             {x for c in claims for x in (c.a, c.b)})


def test_seeds_go_only_to_undecided_arms_the_widest_first():
    rng = np.random.default_rng(24)
    base = rng.normal(0, 1, 12)
    data = _table(ref=10 + 0.01 * base, clear=0.01 * base[::-1],  # decided at the first look (a huge gap)
                  noisy=10 + 2.0 * rng.normal(0, 1, 12), tight=10 + 0.2 * rng.normal(0, 1, 12), other=10 + 0.2 * base)
    claims = [Claim("clear", "ref", "below"), Claim("noisy", "tight", "below")]
    result = _replay(data, claims, {a: 3 for a in data})
    assert result.look_index == 0 and not result.done
    assert result.verdicts == {"clear below ref": "held", "noisy below tight": "inconclusive"}
    assert list(result.seeds_to_add) == ["noisy", "tight"]  # the noisy arm's next seed narrows the CI most
    assert result.seeds_to_add == {"noisy": 2, "tight": 2}  # to the next look (5); 'clear', 'ref' get none


def test_it_stops_when_every_expectation_is_decided_or_the_budget_is_spent():
    rng = np.random.default_rng(25)
    clear = _table(x=rng.normal(0, 0.01, 12), y=rng.normal(10, 0.01, 12))
    done = _replay(clear, [Claim("x", "y", "below")], {"x": 3, "y": 3})
    assert done.done and done.reason == "every expectation decided" and done.seeds_to_add == {}
    same = _table(x=rng.normal(0, 1, 12), y=rng.normal(0, 1, 12))
    plan = sequential.Plan(max_seeds=5)
    assert plan.schedule() == (3, 5)
    waiting = _replay(same, [Claim("x", "y", "below")], {"x": 3, "y": 3}, plan)
    spent = _replay(same, [Claim("x", "y", "below")], {"x": 5, "y": 5}, plan)
    assert not waiting.done and waiting.seeds_to_add == {"x": 2, "y": 2}
    assert spent.done and spent.reason.startswith("budget spent") and spent.verdicts["x below y"] == "inconclusive"
    before = _replay(same, [Claim("x", "y", "below")], {"x": 3, "y": 1})
    assert before.look_index == -1 and before.seeds_to_add == {"y": 2}  # the first look needs 3 a side


def test_a_decision_is_kept_at_later_looks():
    """The shared reference gets more seeds for the undecided comparison; the decided one keeps its look."""
    rng = np.random.default_rng(26)
    data = _table(ref=rng.normal(10, 0.01, 12), clear=rng.normal(0, 0.01, 12), same=rng.normal(10, 1, 12))
    claims = [Claim("clear", "ref", "below"), Claim("same", "ref", "below")]
    result = _replay(data, claims, {"ref": 5, "clear": 3, "same": 5})
    assert result.look_index == 1 and result.decided == {"clear below ref": 0}
    assert result.looks[1].words["clear below ref"] == ("held", 0)


# ---- (d) resumable from the evidence alone
@pytest.fixture(scope="module")
def textlm():
    table = load_table("shapes-textlm")
    return collect(table, ROOT / "reports" / "shapes-textlm" / "runs")


def test_the_same_evidence_gives_the_same_look(textlm):
    first = sequential.next_look(textlm, sequential.Plan(max_seeds=8))
    again = sequential.next_look(collect(textlm.table, textlm.folder), sequential.Plan(max_seeds=8))
    assert dataclasses.asdict(first) == dataclasses.asdict(again)
    assert first.look_index == 0 and not first.done and first.seeds_to_add
    assert set(first.seeds_to_add) <= sequential.expectation_arms(textlm)
    assert "**Look 1**" in sequential.markdown(first)
    assert sequential.next_seeds(textlm, "full", 2) == [3, 4]  # after seeds 0-2, so later looks take them last


def test_the_look_follows_from_the_seeds_present():
    """Adding exactly the seeds a look asks for reaches the next look, replaying the earlier ones unchanged."""
    rng = np.random.default_rng(27)
    data = _table(x=rng.normal(0, 1, 12), y=rng.normal(0.8, 1, 12))
    claims = [Claim("x", "y", "below")]
    present = {"x": 3, "y": 3}
    earlier = _replay(data, claims, present)
    for a, k in earlier.seeds_to_add.items():
        present[a] += k
    later = _replay(data, claims, present)
    assert later.look_index == earlier.look_index + 1
    assert dataclasses.asdict(later.looks[0]) == dataclasses.asdict(earlier.looks[0])


def test_the_family_is_the_reports(textlm):
    """sequential.questions carries the report's own tests (same labels, same Holm-adjusted p) with their arms."""
    from ablations.decide import verdicts
    questions = sequential.questions(textlm)
    report = [t for v in verdicts.expectations(textlm) for t in v.tests]
    assert [(t.label, t.p_adjusted) for q in questions for t in q.tests] == [(t.label, t.p_adjusted) for t in report]
    floor = next(q for q in questions if q.key == "blind: floor")
    assert floor.arms[0] == ("blind",) and ("blind", "meanpool") in floor.arms


def test_restrict_keeps_each_variants_first_seeds(textlm):
    small = sequential.restrict(textlm, {"full": 2})
    assert sorted(small.runs[small.runs["variant"] == "full"]["seed"]) == [0, 1]
    assert sorted(small.per_image["full"]) == [0, 1] and len(small.per_image["meanpool"]) == 3


def test_the_plan_and_its_levels():
    assert sequential.Plan(max_seeds=8).schedule() == (3, 5, 8)
    assert sequential.Plan(max_seeds=10).schedule() == (3, 5, 8, 10)
    assert sequential.Plan(max_seeds=20).schedule() == (3, 5, 8, 12)
    with pytest.raises(UserError, match="max-seeds 2"):
        sequential.Plan(max_seeds=2).schedule()
    one, ten = sequential.nominal_levels(PLAN, 1), sequential.nominal_levels(PLAN, 10)
    assert all(a < b for a, b in zip(one, one[1:])) and all(t <= o for t, o in zip(ten, one))
    assert sum(one) > 0.05 > one[-1]  # more than 0.05 spent in all (the looks overlap), less at any one look
