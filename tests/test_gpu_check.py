"""benchmarks/gpu_check.py: the environment stops it within seconds with one line; a library outside pyproject's
ranges is named; the dry run (slow) goes to the end and its results score where Java is."""
import importlib.util
import json
import subprocess
import sys
import tarfile
import time
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _args(tmp_path, **kw):
    return Namespace(**{"dry_run": True, "out": tmp_path / "out", "cache_dir": tmp_path / "cache",
                        "budget_minutes": float("inf"), "skip_tests": True, "any_versions": False, **kw})


def test_a_missing_library_stops_the_check_at_once(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "LIBRARIES", gpu_check.LIBRARIES + ["no_such_library"])
    start = time.time()
    assert gpu_check.device_phase(_args(tmp_path)) == 3
    assert time.time() - start < 60
    rows = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["rows"]
    assert rows[-1]["status"] == "FAIL" and "cannot import no_such_library" in rows[-1]["numbers"]
    assert not (tmp_path / "cache").exists()  # nothing was built


def test_a_version_outside_pyprojects_ranges_is_named(gpu_check, tmp_path, monkeypatch):
    assert gpu_check.outside_ranges({"torch": "2.11.0+cu130", "pycocoevalcap": "1.2+nojars"}) == []
    (problem,) = gpu_check.outside_ranges({"numpy": "9.0.0"})
    assert problem.startswith("numpy 9.0.0 (wants")
    monkeypatch.setattr(gpu_check, "outside_ranges", lambda versions: ["numpy 9.0.0 (wants <2.6,>=2.0)"])
    assert gpu_check.device_phase(_args(tmp_path)) == 3
    assert "outside pyproject.toml's ranges: numpy 9.0.0" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_missing_evidence_stops_the_check(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "EVIDENCE", tmp_path / "nowhere")
    assert gpu_check.device_phase(_args(tmp_path)) == 3
    assert "the evidence lacks full seed 0" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.slow
def test_the_dry_run_goes_to_the_end_and_scores_where_java_is(tmp_path):
    out, scored = tmp_path / "out", tmp_path / "scored"
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--skip-tests", "--out", str(out),
                          "--cache-dir", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with tarfile.open(out / "gpu_check_runs.tar.gz") as tar:
        assert sum(n.endswith("/DONE") for n in tar.getnames()) == 6
    score = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--score", str(out), "--out", str(scored)],
                           cwd=ROOT, capture_output=True, text=True)
    assert score.returncode == 0, score.stdout[-3000:] + score.stderr[-3000:]
    rows = json.loads((scored / "gpu_check_scored.json").read_text())["rows"]
    assert any(r["check"].startswith("rerun full seed 0") and r["status"] == "PASS" for r in rows)
    assert {r["comparison"]["quantity"] for r in rows if "comparison" in r} >= {"CIDEr", "BLEU-4", "nll_gap"}
