"""The GPU check: the same small table on `cuda` and on `cpu`, both sets of metrics and the speed ratio.

    python benchmarks/gpu_check.py [--table shapes] [--only full --only meanpool] [--seeds 1] [--precision fp32]

Needs a machine with CUDA (it says so and stops otherwise). The caches (caption LM, features) are
built first, on the GPU, so the times compare the runs alone. Metrics on the two devices agree only
up to floating-point differences (different kernels), so they are printed side by side, not asserted.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from ablations.cli import app
from ablations.record import RunRecord, run_path
from ablations.runner import prepare
from ablations.tables import apply_settings, load_table

SHOWN = ["BLEU-4", "METEOR", "CIDEr"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="shapes")
    ap.add_argument("--only", action="append", default=None)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--cache-dir", default=".cache")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device on this machine (torch {torch.__version__}): nothing to compare")
    only = args.only or ["full"]
    table = load_table(args.table)
    apply_settings(table, None, ["run.device='cuda'"])
    prepare(table, Path(args.cache_dir), log=lambda *_: None)
    times, results = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for device in ("cuda", "cpu"):
            runs = Path(tmp) / device
            cmd = ["run-all", args.table, "--device", device, "--executor", "serial", "--precision",
                   args.precision if device == "cuda" else "fp32", "--seeds", str(args.seeds), "--runs-dir", str(runs),
                   "--cache-dir", args.cache_dir] + [a for v in only for a in ("--only", v)]
            start = time.time()
            result = CliRunner().invoke(app, cmd)
            times[device] = time.time() - start
            if result.exit_code != 0:
                raise SystemExit(result.output)
            results[device] = {(v, s): RunRecord(run_path(runs, table.name, v, s)).metrics()
                               for v in only for s in table.seeds[: args.seeds]}
    print(f"{args.table}: {', '.join(only)} x {args.seeds} seed(s); GPU {torch.cuda.get_device_name(0)}; "
          f"precision on cuda {args.precision}")
    for (v, s), m in results["cuda"].items():
        c = results["cpu"][(v, s)]
        row = "  ".join(f"{k} {m['metrics'][k]:.3f} / {c['metrics'][k]:.3f}" for k in SHOWN)
        print(f"  {v} seed {s} (cuda / cpu): {row}; swap rate {m['probes']['swap_rate']:.3f} / "
              f"{c['probes']['swap_rate']:.3f}; train s {m['timings']['train']:.1f} / {c['timings']['train']:.1f}")
    print(f"  wall time: cuda {times['cuda']:.1f} s, cpu {times['cpu']:.1f} s, speed-up {times['cpu'] / times['cuda']:.1f}x")
    print(json.dumps({"seconds": times}, indent=None))


if __name__ == "__main__":
    main()
