"""Wall time of the same grid of runs on each executor, side by side in one invocation.

    python benchmarks/executors.py [--table shapes] [--variants full meanpool] [--seeds 2] [--ray]

The caches (caption LM, features) are built first and shared, so the times are the runs alone.
Two processes with one thread each vs one process with all (2) threads is the question on this
machine; the metrics of each executor are compared with the serial ones as well.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from typer.testing import CliRunner

from ablations.cli import app
from ablations.run.runner import prepare
from ablations.tables import load_table


def grid(table: str, executor: str, runs: Path, cache: Path, variants: list[str], seeds: int, extra: list[str]) -> float:
    args = ["run-all", table, "--executor", executor, "--seeds", str(seeds), "--runs-dir", str(runs),
            "--cache-dir", str(cache)] + [a for v in variants for a in ("--only", v)] + extra
    start = time.time()
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="shapes")
    ap.add_argument("--variants", nargs="+", default=["full", "meanpool"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--ray", action="store_true", help="also the Ray executor on a local cluster")
    args = ap.parse_args()
    cache = Path(args.cache_dir)
    prepare(load_table(args.table), cache, log=lambda *_: None)  # caches first: the timings are the runs only
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("serial", []), ("serial", ["--cpus-per-run", "1"]), ("local", [])] + ([("ray", [])] if args.ray else [])
        times = {}
        for executor, extra in cases:
            label = executor + (" 1 thread" if extra else "")
            times[label] = grid(args.table, executor, Path(tmp) / label.replace(" ", "-"), cache, args.variants,
                                args.seeds, extra)
        n = len(args.variants) * args.seeds
        print(f"{args.table}: {n} runs ({', '.join(args.variants)} x {args.seeds} seeds), caches warm")
        base = times["serial"]
        for label, t in times.items():
            print(f"  {label:16s} {t:7.1f} s   {base / t:4.2f}x the serial throughput")
        ref = Path(tmp) / "serial-1-thread" / load_table(args.table).name
        for label in [k for k in times if k not in ("serial", "serial 1 thread")]:
            other = Path(tmp) / label.replace(" ", "-") / load_table(args.table).name
            same = all(json.loads((ref / m.relative_to(other)).read_text())["metrics"] == json.loads(m.read_text())["metrics"]
                       for m in other.glob("*/*/metrics.json"))
            print(f"  {label} metrics equal to serial with 1 thread per run: {same}")


if __name__ == "__main__":
    main()
