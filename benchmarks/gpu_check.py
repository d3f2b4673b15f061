"""The GPU check: one script, a pass/fail table with numbers, meant to finish in under 10 minutes on one GPU.

    python benchmarks/gpu_check.py [--cache-dir .cache] [--log gpu_check.log]
    python benchmarks/gpu_check.py --dry-run     # this script's own logic on the CPU: 'cpu' stands in for the
                                                 # GPU and the shapes table is cut to 1 epoch and 60 test images

Checks, in order: CUDA and bf16 availability; tests/test_devices.py; `shapes` `full` seed 0 in fp32, bf16 and
fp16 on the GPU against the same run in fp32 on the CPU (CIDEr within CIDER_TOL, NLL gap within GAP_TOL: shapes
seeds spread by about 0.2 CIDEr and 0.02 nats; provenance device = cuda); an fp32 rerun on the GPU against the
first (deterministic settings: expected exact); a short beam-search + self-critical run (its cross-entropy model
scored too); the local executor (one worker per GPU) and Ray with half a GPU per task (each run records cuda);
the speed of a training step, GPU against CPU, after warm-up and synchronised. A failing check prints its last
error line; the full traceback goes to --log. Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # its sibling benchmark, run as a script
from throughput import samples_per_second  # noqa: E402

from ablations.run import executors
from ablations.console import quiet_libraries
from ablations.run.record import CACHE_DIR, RunRecord, run_path
from ablations.run.runner import prepare
from ablations.tables import apply_settings, load_table

CIDER_TOL, GAP_TOL = 0.25, 0.05
DRY_RUN_SETTINGS = ["data.eval_images=60", "train.epochs=1"]


class Checks:
    """Rows of (check, PASS/FAIL/SKIP, numbers); an exception fails its check, not the script."""

    def __init__(self, log: Path):
        self.rows, self.log = [], log

    def run(self, name: str, fn) -> object:
        start = time.time()
        try:
            ok, numbers, value = fn()
            status = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        except Exception as err:  # noqa: BLE001: the table must show every check, whatever breaks
            status, numbers, value = "FAIL", f"{type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}", None
            with open(self.log, "a") as fh:
                fh.write(f"== {name}\n{traceback.format_exc()}\n")
        self.rows.append((name, status, f"{numbers} ({time.time() - start:.0f} s)"))
        print(f"{status:4}  {name}: {numbers}", flush=True)
        return value

    def table(self) -> str:
        lines = ["| check | result | numbers |", "|---|---|---|"]
        return "\n".join(lines + [f"| {n} | {s} | {x} |" for n, s, x in self.rows])


def run_cells(device: str, precision: str, kind: str, runs_dir: Path, cache_dir: Path, extra: list[str],
              seeds=(0,), gpus_per_run: float = 0.0) -> dict:
    """`shapes` `full` at these seeds on ``device``/``precision`` with executor ``kind``: (variant, seed) -> record."""
    table = load_table("shapes")
    variant = table.variants["full"]
    apply_settings(table, variant, extra + [f"run.device='{device}'", f"run.precision='{precision}'",
                                            f"run.executor='{kind}'", f"run.gpus_per_run={gpus_per_run}"])
    workspace = prepare(table, cache_dir, log=lambda *_: None)
    todo = [(variant, s) for s in seeds]
    lost = executors.executor(kind, workspace, runs_dir, cache_dir, None, log=lambda *_: None).run(todo, lambda *a: None)
    if lost:
        raise RuntimeError(f"{lost} run(s) lost")
    return {s: RunRecord(run_path(runs_dir, table.name, variant.name, s)) for s in seeds}


def numbers(record: RunRecord) -> dict:
    m = record.metrics()
    return {"CIDEr": m["metrics"]["CIDEr"], "nll_gap": m["probes"]["nll_gap"],
            "device": record.provenance().get("device", "?"), "all": {**m["metrics"], **m["probes"]}}


def compare(run: dict, reference: dict, want_device: str) -> tuple[bool, str, dict]:
    d_cider, d_gap = run["CIDEr"] - reference["CIDEr"], run["nll_gap"] - reference["nll_gap"]
    ok = abs(d_cider) <= CIDER_TOL and abs(d_gap) <= GAP_TOL and run["device"].startswith(want_device)
    return ok, (f"CIDEr {run['CIDEr']:.3f} vs {reference['CIDEr']:.3f} (Δ {d_cider:+.3f}, tol {CIDER_TOL}); NLL gap "
                f"{run['nll_gap']:.3f} vs {reference['nll_gap']:.3f} (Δ {d_gap:+.3f}, tol {GAP_TOL}); device {run['device']}"), run


@dataclass
class Setup:
    """What every check shares: the device standing for the GPU, extra settings, a scratch folder, the cache."""

    dry_run: bool
    gpu: str
    extra: list[str]
    scratch: Path
    cache_dir: Path

    def cells(self, device: str, precision: str, kind: str = "serial", name: str | None = None, **kw) -> dict:
        return run_cells(device, precision, kind, self.scratch / (name or f"{device}-{precision}-{kind}"),
                         self.cache_dir, self.extra, **kw)


def availability(setup: Setup):
    if setup.dry_run:
        return None, f"dry run: CUDA {torch.cuda.is_available()}, the CPU stands in", None
    return torch.cuda.is_bf16_supported(), (f"{torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s), "
                                            f"bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}"), None


def device_tests(setup: Setup):
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_devices.py"], capture_output=True, text=True)
    return out.returncode == 0, (out.stdout.strip().splitlines() or ["no output"])[-1], None


def cpu_reference(setup: Setup):
    r = numbers(setup.cells("cpu", "fp32")[0])
    return True, f"CIDEr {r['CIDEr']:.3f}, NLL gap {r['nll_gap']:.3f}", r


def rerun(setup: Setup, first: dict):
    again = numbers(setup.cells(setup.gpu, "fp32", name="rerun")[0])
    diffs = {k: abs(v - first["all"][k]) for k, v in again["all"].items() if isinstance(v, (int, float)) and k in first["all"]}
    worst = max(diffs, key=diffs.get)
    return diffs[worst] == 0, f"largest difference {diffs[worst]:.3g} ({worst}); expected exact", None


def beam_and_scst(setup: Setup):
    settings = ["train.num_beams=3", "train.scst_epochs=1", "train.scst_samples=3", "train.scst_candidates='beam'",
                "train.scst_baseline='others'"] + (["data.train_images=200"] if setup.dry_run else [])
    record = run_cells(setup.gpu, "fp32", "serial", setup.scratch / "scst", setup.cache_dir, setup.extra + settings)[0]
    history = record.history()
    m, phases = record.metrics(), set(history["phase"].fillna("xe")) if "phase" in history else {"xe"}
    ok = "scst" in phases and "metrics_xe" in m
    return ok, f"CIDEr cross-entropy {m.get('metrics_xe', {}).get('CIDEr', float('nan')):.3f} → final {m['metrics']['CIDEr']:.3f}", None


def local_pool(setup: Setup):
    table = load_table("shapes")
    apply_settings(table, None, [f"run.device='{setup.gpu}'", "run.executor='local'"])
    gpus = torch.cuda.device_count()
    workers = executors.local_workers(table, runs=4, cpus=16, gpus=gpus)
    devices = sorted({numbers(r)["device"] for r in setup.cells(setup.gpu, "fp32", "local", seeds=(0, 1)).values()})
    ok = all(d.startswith(setup.gpu) for d in devices) and (setup.dry_run or len(workers) == gpus)
    return ok, f"{len(workers)} worker(s) for {gpus} GPU(s): {workers}; runs on {devices}", None


def ray_half_gpu(setup: Setup):
    try:
        import ray  # noqa: F401
    except ImportError:
        return None, "ray not installed (pip install -e '.[ray]')", None
    records = setup.cells(setup.gpu, "fp32", "ray", seeds=(0, 1), gpus_per_run=0.0 if setup.dry_run else 0.5)
    devices = sorted({numbers(r)["device"] for r in records.values()})
    return (all(d.startswith(setup.gpu) for d in devices),
            f"2 tasks{'' if setup.dry_run else ' at 0.5 GPU each'}: runs on {devices}", None)


def speed(setup: Setup):
    rates = {}
    for device in dict.fromkeys((setup.gpu, "cpu")):
        table = load_table("shapes")
        apply_settings(table, table.variants["full"], setup.extra + [f"run.device='{device}'"])
        workspace = prepare(table, setup.cache_dir, splits=("train",), log=lambda *_: None)
        rates[device] = samples_per_second(workspace, table.variants["full"], steps=5 if setup.dry_run else 30,
                                           reencode=False)
    return True, (", ".join(f"{d} {r:.0f} images/s" for d, r in rates.items())
                  + f"; ratio {rates[setup.gpu] / rates['cpu']:.1f}x"), None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    ap.add_argument("--log", type=Path, default=Path("gpu_check.log"))
    args = ap.parse_args()
    quiet_libraries()
    if not args.dry_run and not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}); `--dry-run` checks this script on the CPU")
        return 2
    gpu, extra = ("cpu", DRY_RUN_SETTINGS) if args.dry_run else ("cuda", [])
    setup = Setup(args.dry_run, gpu, extra, Path(tempfile.mkdtemp(prefix="gpu-check-")), args.cache_dir)
    checks = Checks(args.log)
    args.log.write_text("")
    checks.run("CUDA and bf16", lambda: availability(setup))
    checks.run("tests/test_devices.py", lambda: device_tests(setup))
    reference = checks.run("shapes full seed 0, CPU fp32 (the reference)", lambda: cpu_reference(setup))
    first = None
    for precision in ("fp32", "bf16", "fp16"):
        run = checks.run(f"shapes full seed 0, GPU {precision} vs CPU fp32",
                         lambda p=precision: compare(numbers(setup.cells(gpu, p)[0]), reference, gpu) if reference
                         else (False, "no reference", None))
        first = run if precision == "fp32" else first
    checks.run("fp32 rerun on the GPU vs the first (determinism)",
               lambda: rerun(setup, first) if first else (False, "no first run", None))
    checks.run("beam search + self-critical run", lambda: beam_and_scst(setup))
    checks.run("local executor, one worker per GPU", lambda: local_pool(setup))
    checks.run("Ray executor, a fraction of a GPU per task", lambda: ray_half_gpu(setup))
    checks.run("training step speed, GPU vs CPU (warm-up, synchronised)", lambda: speed(setup))
    print("\n" + checks.table())
    return 1 if any(s == "FAIL" for _, s, _ in checks.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
