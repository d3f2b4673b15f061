"""The command line starts without the heavy libraries; every report exports its verdicts (verdicts.csv /
verdicts.json) and `ablate readme` its findings cells (findings.csv), each equal to what the markdown shows;
the writer line names a dirty tree's diff."""
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablations.report import write as report_module
from ablations.cli import app
from ablations.report.findings import END, HEADLINE, START, write_readme_block
from ablations.report.formatting import fmt_p

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "pandas", "scipy", "matplotlib")

# In a fresh interpreter (pytest's own has torch loaded by conftest): `--help` of the app and of every
# command and sub-command, then which heavy libraries got imported.
HELP_SCRIPT = """
import json, sys
import click, typer
from typer.testing import CliRunner
from ablations.cli import app

def paths(command, prefix=()):
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():
        yield from paths(sub, prefix + (name,))

runner, failed, seen = CliRunner(), [], 0
for path in paths(typer.main.get_command(app)):
    result = runner.invoke(app, [*path, "--help"])
    seen += 1
    if result.exit_code != 0 or "Usage" not in result.output:
        failed.append([" ".join(path), result.exit_code, result.output[-300:]])
print(json.dumps({"seen": seen, "failed": failed, "heavy": [m for m in %r if m in sys.modules]}))
"""


def test_help_of_every_command_imports_no_heavy_library():
    out = subprocess.run([sys.executable, "-c", HELP_SCRIPT % (HEAVY,)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seen"] >= 12 and result["failed"] == []  # the app, its commands and `data` / `evidence` ones
    assert result["heavy"] == [], f"`ablate --help` imports {result['heavy']}: import them inside the commands"


# `ablate list` in a fresh interpreter: it loads every shipped table and hashes every cell, then which heavy
# libraries got imported (pandas comes with the metric registry; torch and transformers must not come at all).
LIST_SCRIPT = """
import json, sys
from typer.testing import CliRunner
from ablations.cli import app

result = CliRunner().invoke(app, ["list"])
print(json.dumps({"code": result.exit_code, "output": result.output[-300:],
                  "heavy": [m for m in ("torch", "transformers", "peft") if m in sys.modules]}))
"""


def test_list_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", LIST_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and " runs" in result["output"], result["output"]
    assert result["heavy"] == [], f"`ablate list` imports {result['heavy']}: keep the config dataclasses torch-free"


def test_the_cli_defaults_are_the_libraries_values():
    from ablations import cli
    from ablations.run import record
    from vlm_core import device

    assert (cli.RUNS_DIR, cli.CACHE_DIR, cli.REPORTS_DIR) == (record.RUNS_DIR, record.CACHE_DIR, record.REPORTS_DIR)
    assert cli.AUTO_DEVICE == device.AUTO_DEVICE


def test_quiet_libraries_before_transformers_loads_quiets_it_the_same():
    script = ("from ablations.console import quiet_libraries; quiet_libraries()\n"
              "import sys; assert 'transformers' not in sys.modules\n"
              "from transformers.utils import logging as l\n"
              "from huggingface_hub.utils import are_progress_bars_disabled\n"
              "print(l.get_verbosity() == l.ERROR, l.is_progress_bar_enabled(), are_progress_bars_disabled())")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False", "True"]


# ---- verdicts.csv / verdicts.json
def _md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table of a page: (header, rows), cells stripped."""
    out, lines = [], text.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("| ") and k + 1 < len(lines) and lines[k + 1].startswith("|---"):
            rows = []
            for row in lines[k + 2:]:
                if not row.startswith("| "):
                    break
                rows.append([c.strip() for c in row[2:-2].split(" | ")])
            out.append(([c.strip() for c in line[2:-2].split(" | ")], rows))
    return out


def _float(x: str) -> float:
    return float(x) if x != "" else math.nan


def _ci(estimate: float, low: float, high: float) -> str:
    return f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


@pytest.fixture(scope="module", params=["shapes", "flickr8k-tiny"])  # flickr8k-tiny: budget verdicts
def built(request, tmp_path_factory):
    """`ablate report TABLE --out DIR` from the committed evidence (copied), no local runs."""
    table, out = request.param, tmp_path_factory.mktemp("reports")
    shutil.copytree(ROOT / "reports" / table / "runs", out / table / "runs")
    result = CliRunner().invoke(app, ["report", table, "--out", str(out), "--runs-dir", str(out / "no-local-runs")])
    assert result.exit_code == 0, result.output
    folder = out / table
    with open(folder / "verdicts.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"table": table, "folder": folder, "readme": (folder / "README.md").read_text(), "rows": rows,
            "json": json.loads((folder / "verdicts.json").read_text())}


def _grouped(rows: list[dict]) -> dict[tuple, list[dict]]:
    out = {}
    for r in rows:
        out.setdefault((r["section"], r["variant"], r["expectation"], r["expected"]), []).append(r)
    return out


def test_every_verdict_of_the_readme_is_exported_with_the_same_verdict_and_numbers(built):
    tables = _md_tables(built["readme"])
    expectation_rows = [r for h, rows in tables if h == ["variant", "expected", "rule", "verdict", "numbers"] for r in rows]
    claim_rows = [r for h, rows in tables if h == ["variant", "claim", "verdict", "numbers"] for r in rows]
    assert expectation_rows
    readme = {("expectations", v, rule, expected): (verdict, numbers) for v, expected, rule, verdict, numbers in expectation_rows}
    readme |= {("claims", v, expected): (verdict, numbers) for v, expected, verdict, numbers in claim_rows}
    exported = _grouped(built["rows"])
    in_tables = {k: tests for k, tests in exported.items() if k[0] != "budgets"}
    assert len(in_tables) == len(readme), "each verdict row of the README is one verdict of verdicts.csv"
    for (section, variant, expectation, expected), tests in in_tables.items():
        key = (section, variant, expectation, expected) if section == "expectations" else ("claims", variant, expected)
        assert key in readme, f"verdicts.csv has {key}, the README does not"
        verdict, numbers = readme[key]
        first = tests[0]
        assert verdict == (f"**{first['verdict']}**" if first["verdict"] != "n/a" else "n/a"), key
        assert numbers == first["numbers"], key
        for t in tests:
            if not t["test"]:
                continue
            assert t["test"] in numbers
            est, low, high = _float(t["estimate"]), _float(t["ci_low"]), _float(t["ci_high"])
            if not math.isnan(low):
                assert f"{t['test']} {_ci(est, low, high)}" in numbers, (key, t["test"])
            if not t["guard"]:
                assert f"Holm p = {fmt_p(_float(t['p_adjusted']))}" in numbers, (key, t["test"])
                assert t["decision"] in ("held", "not held", "inconclusive")
            if t["compared_with"]:
                assert t["test"].startswith("Δ" + t["quantity"] + " ") and t["test"].endswith(" − " + t["compared_with"])
                assert int(t["seeds"]) == min(int(t["seeds_variant"]), int(t["seeds_compared"]))


def test_budget_verdicts_are_exported_as_the_report_says_them(built):
    budgets = {k: tests for k, tests in _grouped(built["rows"]).items() if k[0] == "budgets"}
    if built["table"] != "flickr8k-tiny":
        assert budgets == {}
        return
    assert budgets
    for (_, variant, _, _), tests in budgets.items():
        sentence = tests[0]["numbers"]
        assert f"- {sentence}" in built["readme"].splitlines()
        assert f"**{tests[0]['verdict']}**" in sentence
        for t in tests:
            epochs = int(t["epochs"])
            step = f"{epochs} epoch{'s' if epochs != 1 else ''}: {t['decision']} "
            assert step + _ci(_float(t["estimate"]), _float(t["ci_low"]), _float(t["ci_high"])) in sentence
            assert f"{t['seeds']} seeds" in sentence


def test_verdicts_json_holds_the_same_verdicts_as_the_csv(built):
    data = built["json"]
    assert data["table"] == built["table"]
    flat = [(v["section"], v["variant"], v["expectation"], v["verdict"], t.get("test"), t.get("estimate"))
            for v in data["verdicts"] for t in v["tests"] or [{}]]
    rows = [(r["section"], r["variant"], r["expectation"], r["verdict"], r["test"] or None,
             float(r["estimate"]) if r["estimate"] else None) for r in built["rows"]]
    assert flat == rows


# ---- findings.csv
def test_findings_csv_has_one_row_per_cell_of_the_readme_block(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    write_readme_block(readme, ROOT / "reports", tmp_path / "findings.csv")
    text = readme.read_text()
    block = text[text.index(START): text.index(END)]
    ((header, body),) = [t for t in _md_tables(block) if t[0][:2] == ["variant", "expected"]]
    assert header[2:] == list(HEADLINE.values())
    with open(tmp_path / "findings.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(body) * len(HEADLINE)
    cells = {(r[0], r[1], t): cell for r in body for t, cell in zip(HEADLINE, r[2:])}
    for r in rows:
        assert cells[(f"`{r['variant']}`", r["expected"], r["table"])] == r["cell"], r
        if r["delta"]:
            assert r["cell"].endswith(f"{_ci(float(r['delta']), float(r['ci_low']), float(r['ci_high']))}"), r
        assert bool(r["verdict"]) == (r["cell"] not in ("–", "not run yet", "not run")), r


# ---- the writer line
def test_a_dirty_writer_is_named_with_a_hash_of_its_diff(monkeypatch):
    commit = {"git_commit": "0123456789abcdef", "source_hash": "x"}
    assert report_module.writer_label({**commit, "dirty": False}) == "0123456789"
    monkeypatch.setattr(report_module, "code_diff", lambda: "diff --git a/vlm_core/x.py b/vlm_core/x.py\n+one")
    one = report_module.writer_label({**commit, "dirty": True})
    monkeypatch.setattr(report_module, "code_diff", lambda: "diff --git a/vlm_core/x.py b/vlm_core/x.py\n+two")
    two = report_module.writer_label({**commit, "dirty": True})
    assert one.startswith("0123456789+dirty (diff ") and len(one) == len("0123456789+dirty (diff 01234567)")
    assert one != two


def test_the_recompute_snippet_prints_the_reported_ci_and_p(built):
    """The Evidence section's Python, run on the report's runs.csv, prints the Δ, 95% CI and Welch p that the ΔCIDEr
    table reports for its variant (issue 50: it printed [−0.013, 0.021] beside a reported [−0.022, 0.030])."""
    import re

    text = built["readme"]
    found = re.search(r"This prints the `([^`]+)` row of the ΔCIDEr table.*?```python\n(.*?)```", text, re.S)
    assert found, "no recompute snippet"
    variant, code = found.groups()
    out = subprocess.run([sys.executable, "-c", code], cwd=built["folder"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    table = text.split("### ΔCIDEr")[1].split("\n### ")[0]
    row = next(line for line in table.splitlines() if line.startswith(f"| {variant} |")).split(" | ")
    assert out.stdout.strip() == f"{row[1]} p = {row[2]}", (out.stdout, row[:3])
