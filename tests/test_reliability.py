"""Crash safety, bad inputs, divergence: what an unattended study needs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablations.cli import app

from .micro import MICRO, snapshot, write_micro
from .test_data import make_flickr

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------ divergence
def test_nan_loss_marks_run_failed_and_others_finish(tmp_path):
    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full", "nan"))
    result = _cli("run-all", table, "--runs-dir", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    failed = tmp_path / "runs" / "micro" / "nan" / "seed-0" / "FAILED"
    assert failed.exists() and "nan" in json.loads(failed.read_text())["reason"]
    assert not (failed.parent / "DONE").exists()
    assert (tmp_path / "runs" / "micro" / "full" / "seed-0" / "DONE").exists()
    rerun = _cli("run-all", table, "--runs-dir", tmp_path / "runs", "--cache-dir", tmp_path / "cache")
    assert "failed earlier" in rerun.output and "nothing to do" in rerun.output
    rep = _cli("report", table, "--runs-dir", tmp_path / "runs", "--out", tmp_path / "reports")
    assert rep.exit_code == 0, rep.output
    text = (tmp_path / "reports" / "micro" / "README.md").read_text()
    assert "## Failed runs" in text and "| nan | 0 | loss is nan" in text


# ------------------------------------------------------------------ bad inputs
FLICKR_TABLE = MICRO.replace('name = "shapes"', 'name = "flickr8k"\npath = "{path}"') + \
    '[variants.full]\nexpect = "image_dependent"\n'


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A finished run that no bad input may touch."""
    root = tmp_path_factory.mktemp("earlier")
    table = write_micro(root / "micro.toml", seeds=(0,), variants=("full",))
    result = _cli("run-all", table, "--runs-dir", root / "runs", "--cache-dir", root / "cache")
    assert result.exit_code == 0, result.output
    return root


def _flickr_case(tmp_path, mutate=None):
    data = make_flickr(tmp_path / "flickr", n=8)
    if mutate:
        mutate(data)
    p = tmp_path / "micro.toml"
    p.write_text(FLICKR_TABLE.format(name="micro", seeds=[0], path=data))
    return p


def _token(d):
    return d / "Flickr8k.token.txt"


def _edit(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


CASES = {
    "data directory missing": (lambda d: __import__("shutil").rmtree(d), "flickr: Flickr8k data directory not found"),
    "image listed but missing": (lambda d: (d / "Images" / "1003_abc.jpg").unlink(),
                                 "Flickr8k.token.txt:16: caption for missing image 1003_abc.jpg"),
    "corrupt image": (lambda d: (d / "Images" / "1001_abc.jpg").write_bytes(b"\xff\xd8 truncated"),
                      "1001_abc.jpg: cannot read image"),
    "malformed caption line": (lambda d: _edit(_token(d), "1002_abc.jpg#3\t", "1002_abc.jpg#3 "),
                               "Flickr8k.token.txt:14: malformed line"),
    "empty caption": (lambda d: _edit(_token(d), "A dog number 2 runs 0 .", " "), "Flickr8k.token.txt:11: empty caption"),
    "non-UTF-8 bytes": (lambda d: _token(d).write_bytes(_token(d).read_bytes().replace(b"number 4", b"numb\xe9r 4", 1)),
                        "Flickr8k.token.txt:21: not valid UTF-8"),
    "duplicated id": (lambda d: _edit(_token(d), "1000_abc.jpg#1\t", "1000_abc.jpg#0\t"),
                      "Flickr8k.token.txt:2: duplicated caption id 1000_abc.jpg#0"),
    "split names unknown image": (lambda d: (d / "Flickr_8k.testImages.txt").write_text("1007_abc.jpg\nghost.jpg\n"),
                                  "Flickr_8k.testImages.txt:2: split names unknown image ghost.jpg"),
}

TABLE_CASES = {
    "TOML syntax error": (lambda t: t.replace("[train]", "[train"), "TOML syntax error"),
    "unknown key": (lambda t: t.replace("lora_rank = 2", "lora_rnak = 2"), "model: unknown key 'lora_rnak'"),
    "wrong type": (lambda t: t.replace("epochs = 2\nbatch_size = 8", "epochs = 2.5\nbatch_size = 8"),
                   "train.epochs: expected int, got float"),
    "unknown backbone": (lambda t: t.replace('vision = "tiny-random-clip"', 'vision = "resnet-9000"'),
                         "unknown vision backbone 'resnet-9000'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_one_line_error_and_nothing_overwritten(case, tmp_path, earlier):
    mutate, message = CASES[case]
    table = _flickr_case(tmp_path, mutate)
    before = snapshot(earlier / "runs")
    result = _cli("run-all", table, "--runs-dir", earlier / "runs", "--cache-dir", earlier / "cache", "--force")
    _assert_one_line_error(result, message)
    assert snapshot(earlier / "runs") == before


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_bad_table_one_line_error_and_nothing_overwritten(case, tmp_path, earlier):
    mutate, message = TABLE_CASES[case]
    good = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))
    good.write_text(mutate(good.read_text()))
    before = snapshot(earlier / "runs")
    result = _cli("run-all", good, "--runs-dir", earlier / "runs", "--cache-dir", earlier / "cache", "--force")
    _assert_one_line_error(result, message)
    assert str(good) in result.output or "unknown vision backbone" in message
    assert snapshot(earlier / "runs") == before


def test_unknown_variant_and_offline_hub_backbone(tmp_path, earlier, monkeypatch):
    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))
    before = snapshot(earlier / "runs")
    result = _cli("run-all", table, "--only", "fulll", "--runs-dir", earlier / "runs", "--cache-dir", earlier / "cache")
    _assert_one_line_error(result, "unknown variant(s) in --only: fulll")
    import huggingface_hub.constants

    # What a machine without network sees, without the minute of retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    table.write_text(table.read_text().replace('vision = "tiny-random-clip"', 'vision = "clip-vit-b32"'))
    result = _cli("run-all", table, "--runs-dir", earlier / "runs", "--cache-dir", earlier / "cache", "--force")
    _assert_one_line_error(result, "vision backbone 'clip-vit-b32' could not be loaded from the Hugging Face hub")
    assert "offline alternatives: vision 'efficientnet-lite0'" in result.output
    assert snapshot(earlier / "runs") == before


def test_train_set_with_a_bad_key_is_a_one_line_error(tmp_path):
    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))
    result = _cli("train", "--table", table, "--set", "train.connector_rate=1e-3", "--out", tmp_path / "run",
                  "--cache-dir", tmp_path / "cache")
    _assert_one_line_error(result, "--set train: unknown key 'connector_rate'")
    assert not (tmp_path / "run").exists()


def _assert_one_line_error(result, message):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_real_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[table\n")
    proc = subprocess.run([sys.executable, "-m", "ablations.cli", "run-all", str(bad), "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "TOML syntax error" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_second_run_all_on_same_folder_is_refused(tmp_path):
    from ablations.run.table_files import table_lock
    from ablations.tables import load_table

    table = load_table(str(write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))))
    with table_lock(tmp_path / "runs", table.name):
        result = _cli("run-all", tmp_path / "micro.toml", "--runs-dir", tmp_path / "runs")
    _assert_one_line_error(result, "another 'ablate run-all' is already writing here")


# ------------------------------------------------------------------ SIGKILL and resume
def _start(table, runs, cache):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ablations.cli", "run-all", str(table), "--runs-dir", str(runs),
                             "--cache-dir", str(cache)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc, condition, timeout=300):
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.wait()
    return False


def test_sigkill_at_several_points_then_resume_matches_uninterrupted(tmp_path):
    table = write_micro(tmp_path / "micro.toml", seeds=(0, 1), variants=("full", "blind"))
    ref = _cli("run-all", table, "--runs-dir", tmp_path / "ref", "--cache-dir", tmp_path / "ref-cache")
    assert ref.exit_code == 0, ref.output
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    table_runs = runs / "micro"

    def dones():
        return len(list(table_runs.glob("*/*/DONE")))

    points = [
        lambda: any(cache.rglob("*.partial")),  # while a cache is being built
        lambda: any(table_runs.glob("*/*/history.json")) and dones() == 0,  # a run half-written
        lambda: dones() >= 1 and len(list(table_runs.glob("*/seed-*"))) > dones(),  # between runs
        lambda: dones() >= 3,
    ]
    killed = 0
    for point in points:
        killed += _kill_when(_start(table, runs, cache), point)
    assert killed >= 2, "the micro table finished before the kill points were reached"
    timing = json.loads((table_runs / "timing.json").read_text())  # killed invocations keep their time
    # timing.json is rewritten right after a run's DONE marker: a kill between the two writes loses at most
    # that one run's count, once per killed invocation.
    assert sum(t["runs"] for t in timing) >= dones() - killed and all(t["total_seconds"] > 0 for t in timing)
    final = _start(table, runs, cache)
    assert final.wait(timeout=600) == 0
    assert not list(cache.rglob("*.partial"))
    for variant in ("full", "blind"):
        for seed in (0, 1):
            a = tmp_path / "ref" / "micro" / variant / f"seed-{seed}"
            b = table_runs / variant / f"seed-{seed}"
            assert (b / "DONE").exists()
            assert (a / "captions.json").read_text() == (b / "captions.json").read_text()
            ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
            assert ma["metrics"] == mb["metrics"] and ma["probes"] == mb["probes"], (variant, seed)
