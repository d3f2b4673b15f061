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


def test_budget_verdicts_are_left_out_and_identical_evidence_replicates_whole():
    original = _records("flickr8k-tiny")  # it has budget verdicts
    rows = compare(original, copy.deepcopy(original))
    assert rows and all(r["same"] for r in rows)
    assert not any(r["section"] == "budgets" for r in rows)
