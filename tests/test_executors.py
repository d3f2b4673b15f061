"""The local process pool, the Ray and the SLURM (submitit) executors give the serial executor's results, and a Ray
worker killed mid-run is redone: every run ends DONE, nothing half-written."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablations.cli import app

from .micro import write_micro

ROOT = Path(__file__).resolve().parents[1]
RUNS = [(v, s) for v in ("full", "blind") for s in (0, 1)]
runner = CliRunner()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    root = tmp_path_factory.mktemp("executors")
    table = write_micro(root / "micro.toml", seeds=(0, 1), variants=("full", "blind"))
    result = runner.invoke(app, ["run-all", str(table), "--cpus-per-run", "1", "--runs-dir", str(root / "serial"),
                                 "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    return root, table


def _same_results(a: Path, b: Path, runs=RUNS):
    for v, s in runs:
        ra, rb = a / "micro" / v / f"seed-{s}", b / "micro" / v / f"seed-{s}"
        assert (rb / "DONE").exists(), rb
        ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ra, rb))
        assert ma["metrics"] == mb["metrics"] and ma["probes"] == mb["probes"] and ma["slots"] == mb["slots"], (v, s)
        assert (ra / "captions.json").read_text() == (rb / "captions.json").read_text()
        assert sorted(p.relative_to(ra) for p in ra.rglob("*")) == sorted(p.relative_to(rb) for p in rb.rglob("*"))


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_parallel_executors_equal_the_serial_one(serial, executor):
    root, table = serial
    result = runner.invoke(app, ["run-all", str(table), "--executor", executor, "--runs-dir", str(root / executor),
                                 "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    _same_results(root / "serial", root / executor)
    cfg = json.loads((root / executor / "micro" / "full" / "seed-0" / "config.json").read_text())
    assert cfg["provenance"]["machine"].endswith("1 torch threads")


def test_the_slurm_executor_equals_the_serial_one(serial):
    """Through submitit's local cluster: the same jobs, shipping and write-back as on SLURM, as processes here."""
    root, table = serial
    result = runner.invoke(app, ["run-all", str(table), "--executor", "slurm", "--executor-option", "cluster=local",
                                 "--seed", "0", "--runs-dir", str(root / "slurm"), "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    _same_results(root / "serial", root / "slurm", runs=[("full", 0), ("blind", 0)])
    assert not (root / "slurm" / "micro" / "blind" / "seed-1").exists()
    jobs = root / "slurm" / ".submitit" / "micro"
    assert list(jobs.glob("*_log.out")) and not list(jobs.glob("*.pkl"))  # logs kept; workspace and results gone


def test_an_executor_and_its_options_are_checked_before_anything_runs(tmp_path):
    from ablations.run.executors import EXECUTORS, check_executor, set_executor_options
    from ablations.tables import load_table
    from vlm_core.errors import UserError

    table = load_table(str(write_micro(tmp_path / "m.toml")))
    table.run.executor = "slurn"
    with pytest.raises(UserError, match=f"run.executor: unknown executor 'slurn'; known: {', '.join(EXECUTORS)}$"):
        check_executor(table)
    table.run.executor = "slurm"
    set_executor_options(table, ["partiton=gpu"])
    with pytest.raises(UserError, match=r"run.options.slurm: unknown key 'partiton'; known: partition, account"):
        check_executor(table)
    table.run.options = {"local": {"workers": 2}}
    with pytest.raises(UserError, match="run.options.local: the local executor takes no options"):
        check_executor(table)
    table.run.options = {}
    if shutil.which("sbatch") is None:  # not a SLURM login node: said before anything runs
        with pytest.raises(UserError, match="no sbatch on the PATH"):
            check_executor(table)
    set_executor_options(table, ["cluster=local", "timeout_min=30"])
    assert table.run.options == {"slurm": {"cluster": "local", "timeout_min": 30}}
    check_executor(table)


def _ray_task_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::ablate_run"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_a_killed_ray_worker_is_redone_and_nothing_is_half_written(serial):
    root, table = serial
    runs = root / "ray-killed"
    proc = subprocess.Popen([sys.executable, "-m", "ablations.cli", "run-all", str(table), "--executor", "ray",
                             "--runs-dir", str(runs), "--cache-dir", str(root / "cache")], cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed, end = None, time.time() + 300
    while killed is None and time.time() < end and proc.poll() is None:
        pids = _ray_task_pids()
        if pids:
            time.sleep(0.5)  # mid-run: the task has started training
            try:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            except ProcessLookupError:
                continue
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=600)
    assert killed is not None, "no Ray task process was seen running"
    assert proc.returncode == 0, out.decode()[-3000:]
    assert not list(runs.rglob("*.tmp")) and not list(runs.rglob("*.partial"))
    _same_results(root / "serial", runs)


# ---- the GPU path, decided by functions that run without a GPU
def test_ray_tasks_ask_for_a_gpu_when_the_runs_are_meant_for_one():
    from ablations.run.executors import gpus_per_task, task_device
    from ablations.tables import RunSpec
    from vlm_core.errors import UserError

    assert gpus_per_task(RunSpec(device="auto"), cluster_gpus=0) == 0.0
    assert gpus_per_task(RunSpec(device="auto"), cluster_gpus=2) == 1.0  # Ray hides GPUs from tasks asking none
    assert gpus_per_task(RunSpec(device="cpu"), cluster_gpus=2) == 0.0
    assert gpus_per_task(RunSpec(device="cuda", gpus_per_run=0.25), cluster_gpus=1) == 0.25
    with pytest.raises(UserError, match="no GPU"):
        gpus_per_task(RunSpec(device="cuda"), cluster_gpus=0)
    assert task_device("cuda:1") == "cuda" and task_device("cpu") == "cpu"  # a task sees only its own GPU


def test_the_local_pool_runs_one_worker_per_gpu(tmp_path):
    from dataclasses import replace

    from ablations.run.executors import local_workers
    from ablations.tables import load_table

    table = load_table(str(write_micro(tmp_path / "m.toml")))
    table.run = replace(table.run, executor="local", cpus_per_run=1, device="auto")
    assert local_workers(table, runs=20, cpus=16, gpus=0) == [None] * 16  # CPU: cores / threads per run
    assert local_workers(table, runs=20, cpus=16, gpus=1) == ["cuda:0"]  # not 16 workers on one GPU
    assert local_workers(table, runs=20, cpus=16, gpus=2) == ["cuda:0", "cuda:1"]
    assert local_workers(table, runs=1, cpus=16, gpus=2) == ["cuda:0"]
    table.run = replace(table.run, device="cuda:1")
    assert local_workers(table, runs=20, cpus=16, gpus=2) == ["cuda:1"]
