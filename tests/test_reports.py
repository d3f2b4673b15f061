"""Every committed report is exactly what the current code writes from its committed evidence: a
hand-edited or stale report cannot land. Only the line naming the writing code's version may differ."""
import difflib
import shutil
from pathlib import Path

import pytest

from ablations.report.write import WRITER_LINE, write_report
from ablations.tables import load_table

REPORTS = Path(__file__).resolve().parents[1] / "reports"
COMMITTED = sorted(p.parent.name for p in REPORTS.glob("*/README.md"))


def _text(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith(WRITER_LINE)]


def test_the_default_report_is_committed():
    assert "shapes" in COMMITTED


@pytest.mark.parametrize("table", COMMITTED)
def test_a_committed_report_regenerates_from_its_evidence(table, tmp_path):
    evidence = REPORTS / table / "runs"
    assert evidence.is_dir(), f"reports/{table}/ has no committed evidence (reports/{table}/runs/)"
    shutil.copytree(evidence, tmp_path / table / "runs")
    if (REPORTS / table / "replications").is_dir():  # separate evidence the report compares with
        shutil.copytree(REPORTS / table / "replications", tmp_path / table / "replications")
    write_report(load_table(table), None, tmp_path, log=lambda message: None)
    for name in ("README.md", "summary.csv", "runs.csv"):
        committed, fresh = REPORTS / table / name, tmp_path / table / name
        assert committed.exists() == fresh.exists(), f"reports/{table}/{name}: committed {committed.exists()}"
        if committed.exists():
            a, b = _text(committed), _text(fresh)
            diff = "\n".join(difflib.unified_diff(a, b, "committed", "regenerated", lineterm="", n=1))
            assert a == b, f"reports/{table}/{name} is not what `ablate report {table}` writes now:\n{diff[:3000]}"
