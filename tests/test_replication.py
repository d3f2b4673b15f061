"""Replication as a result: another set of seeds' verdicts beside the table's own, verdict by verdict."""
import copy
import json
from pathlib import Path

from ablations.report.replication import compare, section_lines

REPO = Path(__file__).resolve().parents[1]


def _records(table: str) -> list[dict]:
    return json.loads((REPO / "reports" / table / "verdicts.json").read_text())["verdicts"]


def test_a_changed_verdict_and_a_variant_not_run_are_told_apart():
    original = _records("shapes")
    again = copy.deepcopy(original)
    changed = next(r for r in again if r["section"] == "expectations" and r["verdict"] == "held")
    changed["verdict"] = "inconclusive"
    changed["tests"][0]["estimate"] = 123.0
    dropped = next(r for r in again if r["variant"] not in (changed["variant"],) and r["section"] == "expectations")
    again.remove(dropped)
    rows = compare(original, again)
    by = {(r["variant"], r["expectation"], r["tests"][0]["test"] if r["tests"] else ""): r for r in rows}
    row = by[(changed["variant"], changed["expectation"], changed["tests"][0]["test"])]
    assert row["same"] is False and row["replication"] == "inconclusive"
    assert row["tests"][0]["again"]["estimate"] == 123.0 and row["tests"][0]["estimate"] != 123.0
    gone = by[(dropped["variant"], dropped["expectation"], dropped["tests"][0]["test"] if dropped["tests"] else "")]
    assert gone["same"] is None and gone["replication"] is None
    compared = [r for r in rows if r["same"] is not None]
    text = "\n".join(section_lines("seeds-5-9", [5, 6, 7, 8, 9], rows, "AMD EPYC"))
    assert f"**{len(compared) - 1} of {len(compared)} verdicts replicate**" in text
    assert "not run" in text and "123.000" in text


def test_a_verdict_whose_tests_changed_is_still_compared():
    """A floor compares with every variant that did not collapse: with other seeds its list of tests changes,
    and the verdict must still be compared (not shown as 'not run' and left out of the count)."""
    original = _records("shapes")
    again = copy.deepcopy(original)
    floor = next(r for r in again if len(r["tests"]) > 1)
    floor["tests"] = floor["tests"][:-1]
    floor["verdict"] = "inconclusive"
    rows = compare(original, again)
    row = next(r for r in rows if (r["section"], r["variant"], r["expectation"]) ==
               (floor["section"], floor["variant"], floor["expectation"]))
    assert row["same"] is False and row["replication"] == "inconclusive"
    assert row["tests"][-1]["again"] == {} and row["tests"][0]["again"]


def test_budget_verdicts_are_left_out_and_identical_evidence_replicates_whole():
    original = _records("flickr8k-tiny")  # it has budget verdicts
    rows = compare(original, copy.deepcopy(original))
    assert rows and all(r["same"] for r in rows)
    assert not any(r["section"] == "budgets" for r in rows)


def test_replicate_runs_new_seeds_into_their_own_evidence_and_the_report_compares(tmp_path):
    from typer.testing import CliRunner

    from ablations.cli import app

    from .micro import write_micro
    table = write_micro(tmp_path / "micro.toml", seeds=(0, 1), variants=("full", "blind"))
    common = ["--runs-dir", tmp_path / "runs", "--reports-dir", tmp_path / "reports", "--cache-dir", tmp_path / "cache"]
    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    assert run("run-all", table, *common).exit_code == 0
    assert run("report", table, "--runs-dir", tmp_path / "runs", "--out", tmp_path / "reports").exit_code == 0
    before = sorted(p.name for p in (tmp_path / "reports" / "micro" / "runs" / "full").iterdir())
    result = run("replicate", table, "--seeds", "2-3", *common)
    assert result.exit_code == 0, result.output
    evidence = tmp_path / "reports" / "micro" / "replications" / "seeds-2-3" / "runs"
    assert sorted(p.name for p in (evidence / "full").iterdir()) == ["seed-2", "seed-3"]
    # the table's own evidence and verdicts are untouched by the replication
    assert sorted(p.name for p in (tmp_path / "reports" / "micro" / "runs" / "full").iterdir()) == before
    text = (tmp_path / "reports" / "micro" / "README.md").read_text()
    assert "## Replications" in text and "### Replication `seeds-2-3`: seeds 2, 3" in text
    assert "verdicts replicate" in text
    # again: nothing to run, the same section
    again = run("replicate", table, "--seeds", "2-3", *common)
    assert again.exit_code == 0 and "0 run(s) made" in again.output
    bad = run("replicate", table, "--seeds", "2-x", *common)
    assert bad.exit_code == 2 and "--seeds '2-x'" in bad.output
