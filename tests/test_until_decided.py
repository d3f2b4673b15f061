"""`ablate run-all --until-decided`: seeds added look by look on the micro table (seconds a run), resumed from
the evidence, and the report's verdicts taken from the look that decided each."""
import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablations.cli import app
from ablations.decide.sequential import Plan, markdown, next_look
from ablations.report.collect import collect
from ablations.report.replication import with_seeds
from ablations.report.until_decided import plan_record, seeds_present, with_present_seeds
from ablations.tables import load_table

from .micro import snapshot, write_micro

MAX = 5  # looks at 3 and 5 seeds per arm


def _cli(root: Path, *args):
    common = ["--runs-dir", root / "runs", "--reports-dir", root / "reports", "--cache-dir", root / "cache"]
    return CliRunner().invoke(app, [str(x) for x in (*args, *common)])


def _state(root: Path):
    """The table, its evidence folder and where the sequential rule stands on it."""
    table = load_table(str(root / "micro.toml"))
    evidence = root / "reports" / "micro" / "runs"
    return table, evidence, next_look(collect(with_present_seeds(table, evidence), evidence), Plan(max_seeds=MAX))


@pytest.fixture(scope="module")
def decided(tmp_path_factory):
    root = tmp_path_factory.mktemp("until")
    # `meanpool` and `full` are the arms (meanpool's CIDEr against full's); `blind`, with no expectation, never gets seeds
    write_micro(root / "micro.toml", seeds=(0, 1, 2), variants=("full", "meanpool"),
                extra='[variants.blind]\nmodel = { blind = true }\n')
    result = _cli(root, "run-all", root / "micro.toml", "--until-decided", "--max-seeds", MAX)
    assert result.exit_code == 0, result.output
    return root, result.output


def test_runs_to_the_end_adding_seeds_only_to_open_arms(decided):
    root, output = decided
    table, evidence, result = _state(root)
    assert result.done and (len(result.decided) == len(result.verdicts) or result.reason.startswith("budget spent"))
    assert json.loads((evidence / "sequential.json").read_text()) == plan_record(Plan(max_seeds=MAX))
    at_first = with_seeds(table, [0, 1, 2])  # where the rule stood on the table's own seeds: the arms it asked for
    open_arms = set(next_look(collect(at_first, evidence), Plan(max_seeds=MAX)).seeds_to_add)
    present = seeds_present(evidence)
    assert open_arms <= {"full", "meanpool"}
    for arm in ("full", "meanpool", "blind"):  # the table's 3 seeds, then 3-4 only where a test stayed open at look 1
        assert present[arm] == ([0, 1, 2, 3, 4] if arm in open_arms else [0, 1, 2]), (arm, present)
    assert "look 1 of 2: 3 seeds per arm; decided:" in output and "adding seeds 3-4 to" in output
    assert f"look {result.look_index + 1} of 2" in output and f"stopped: {result.reason}" in output


def test_a_second_invocation_finds_nothing_to_do(decided):
    root, _ = decided
    before = snapshot(root / "reports" / "micro" / "runs")
    again = _cli(root, "run-all", root / "micro.toml", "--until-decided")  # the stored plan: no --max-seeds needed
    assert again.exit_code == 0, again.output
    assert "nothing to do" in again.output
    assert snapshot(root / "reports" / "micro" / "runs") == before


def test_the_report_shows_each_look_and_its_verdicts_are_the_looks(decided):
    root, _ = decided
    _, _, result = _state(root)
    text = (root / "reports" / "micro" / "README.md").read_text()
    assert "## Seeds added until decided" in text and markdown(result) in text
    records = json.loads((root / "reports" / "micro" / "verdicts.json").read_text())["verdicts"]
    mine = {f"{r['variant']}: {r['expectation']}": r for r in records if r["section"] == "expectations"}
    assert {k: mine[k]["verdict"] for k in result.verdicts} == result.verdicts
    for key in result.verdicts:  # each test's numbers as the deciding look (else the last) computed them
        look = result.looks[result.decided.get(key, result.look_index)]
        rows = [r for r in look.rows if r.question == key]
        assert [(t["test"], t["estimate"], t["decision"]) for t in mine[key]["tests"]] == \
            [(r.label, None if math.isnan(r.estimate) else pytest.approx(r.estimate, rel=1e-6, abs=1e-9), r.decision)
             for r in rows]


def test_killed_half_way_it_resumes_to_the_same_result(decided, tmp_path):
    root, _ = decided
    for part in ("micro.toml", "runs", "reports", "cache"):
        (shutil.copytree if (root / part).is_dir() else shutil.copy)(root / part, tmp_path / part)
    want = json.loads((root / "reports" / "micro" / "verdicts.json").read_text())
    added = sorted((tmp_path / "reports" / "micro" / "runs").glob("*/seed-[34]"))
    assert added, "the fixture added no seeds: nothing to resume"
    for cell in added:  # the last look never reached the evidence
        shutil.rmtree(cell)
        local = tmp_path / "runs" / "micro" / cell.parent.name / cell.name
        if cell.name == "seed-4":  # killed while training: only the writer's unfinished folder beside the cell
            local.rename(local.with_name(".seed-4.killed.partial"))
            (local.with_name(".seed-4.killed.partial") / "DONE").unlink()
    result = _cli(tmp_path, "run-all", tmp_path / "micro.toml", "--until-decided")
    assert result.exit_code == 0, result.output
    assert f"{sum(c.name == 'seed-4' for c in added)} run(s) made" in result.output  # seed 3 was only added
    assert sorted(tmp_path.glob("reports/micro/runs/*/seed-[34]")) == added
    assert json.loads((tmp_path / "reports" / "micro" / "verdicts.json").read_text()) == want


def test_a_changed_plan_and_bad_options_are_one_line(decided):
    root, _ = decided
    changed = _cli(root, "run-all", root / "micro.toml", "--until-decided", "--max-seeds", 8)
    assert changed.exit_code == 2 and "sequential.json" in changed.output and "--max-seeds 5" in changed.output
    alone = _cli(root, "run-all", root / "micro.toml", "--max-seeds", 8)
    assert alone.exit_code == 2 and "give --until-decided too" in alone.output
    only = _cli(root, "run-all", root / "micro.toml", "--until-decided", "--only", "full")
    assert only.exit_code == 2 and "do not combine" in only.output
    for out in (changed, alone, only):
        assert "Traceback" not in out.output and len(out.output.strip().splitlines()) <= 3, out.output


def test_a_verdict_decided_at_an_earlier_look_keeps_that_looks_numbers(tmp_path):
    """On the committed `shapes` evidence (5 seeds) with a stored plan of looks at 3 and 5: an expectation decided at
    look 1 is reported from its first 3 seeds at look 1's level, not re-tested on all 5 at 0.05."""
    from ablations.report.analysis import analyse
    from ablations.report.until_decided import analyse_evidence
    from ablations.run.table_files import SequentialPlan

    evidence = tmp_path / "shapes" / "runs"
    shutil.copytree(Path(__file__).resolve().parents[1] / "reports" / "shapes" / "runs", evidence)
    SequentialPlan(evidence).write(plan_record(Plan(max_seeds=5)))
    table, a, result = analyse_evidence(load_table("shapes"), evidence)
    fixed = {f"{v.variant}: {v.expectation}": v for v in analyse(collect(table, evidence)).expectations}
    mine = {f"{v.variant}: {v.expectation}": v for v in a.expectations}
    assert {k: mine[k].verdict for k in result.verdicts} == result.verdicts
    early = [k for k, at in result.decided.items() if at == 0]
    assert early, "nothing decided at the first look: the case this test is about is missing"
    for key in early:
        assert {t.interval.n for t in mine[key].tests} == {3} and {t.interval.n for t in fixed[key].tests} == {5}
        assert "decided at look 1 of 2" in mine[key].numbers
    # the README's findings block reads the same verdicts (its one number: the look's seed-level difference)
    from ablations.report.findings import findings_data
    cells = {(v, cell["rule"]): cell for v, _, by_table in findings_data(tmp_path).rows
             for t, cell in by_table.items() if t == "shapes" and "rule" in cell}
    with_number = [k for k in early if mine[k].comparison is not None]
    assert with_number, "no early verdict with a seed-level difference: the findings check is missing its case"
    for key in with_number:
        variant, rule = key.split(": ")
        assert cells[(variant, rule)]["verdict"] == result.verdicts[key]
        assert cells[(variant, rule)]["delta"] == mine[key].comparison.seed_level.estimate
        assert mine[key].comparison.seed_level.estimate != fixed[key].comparison.seed_level.estimate


def test_it_refuses_to_leave_runs_unscored(tmp_path, monkeypatch):
    """Each look decides on CIDEr and the swap probes: runs left 'to score' (no Java) would spend the whole
    seed budget on NaN, so the driver refuses before anything trains."""
    from ablations.run import preflight
    from ablations.run.until_decided import until_decided
    from vlm_core.errors import UserError

    table = load_table(str(write_micro(tmp_path / "micro.toml", variants=("full", "meanpool"))))
    table.run.score = "later"
    with pytest.raises(UserError, match="scored runs"):
        until_decided(table, tmp_path / "runs", tmp_path / "cache", tmp_path / "reports")
    table.run.score = "auto"
    monkeypatch.setattr(preflight, "java_version", lambda: (_ for _ in ()).throw(UserError("java: not found")))
    with pytest.raises(UserError, match="java"):
        until_decided(table, tmp_path / "runs", tmp_path / "cache", tmp_path / "reports")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("DONE"))
