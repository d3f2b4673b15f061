"""Training throughput with cached features vs re-encoding images every step, side by side in one
run, and the wall time per stage of a finished table (default: shapes).

    python benchmarks/throughput.py [--steps 20] [--runs-dir runs] [--table shapes]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ablations.report.collect import collect
from ablations.run.runner import build_model, prepare
from ablations.tables import load_table
from vlm_core.device import synchronize
from vlm_core.errors import UserError


def samples_per_second(workspace, variant, steps: int, reencode: bool, warmup: int = 2) -> float:
    """Images per second over ``steps`` training steps after ``warmup`` untimed ones (allocator, kernels and,
    on a GPU, the CUDA context), the device synchronised at both ends of the timed part."""
    model = build_model(workspace, variant.model, 0)
    feats = workspace.features["train"]
    model.connector.fit_feature_stats(feats.batch(list(range(min(256, len(feats.ids))))))
    model.train_trainable_parts()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    bs, per = variant.train.batch_size, variant.train.captions_per_image
    ids = feats.ids
    start, seen = time.time(), 0
    for step in range(-warmup, steps):
        if step == 0:
            synchronize(model.device)
            start, seen = time.time(), 0
        rows = [(step * bs + i) % len(ids) for i in range(bs)]
        if reencode:  # what a loop without the cache does: decode + encode every image, every step
            x = workspace.vision.encode_images([workspace.data.load_image(ids[r]) for r in rows])
        else:
            x = feats.batch(rows)
        caps = [workspace.data.captions[ids[r]][j % 5] for r in rows for j in range(per)]
        loss = model(x, caps, repeats=per)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(rows)
    synchronize(model.device)
    return seen / (time.time() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="shapes")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--cache-dir", default=".cache")
    args = ap.parse_args()
    table = load_table(args.table)
    workspace = prepare(table, Path(args.cache_dir), splits=("train",), log=lambda *_: None)
    variant = table.variants["full"]
    cached = samples_per_second(workspace, variant, args.steps, reencode=False)
    encoded = samples_per_second(workspace, variant, max(3, args.steps // 4), reencode=True)
    print(f"training images/s, {table.name} full, batch {variant.train.batch_size} x "
          f"{variant.train.captions_per_image} captions, {torch.get_num_threads()} threads:")
    print(f"  cached features : {cached:8.1f}")
    print(f"  re-encode images: {encoded:8.1f}")
    print(f"  ratio cached / re-encode: {cached / encoded:.1f}x")

    try:
        stored = collect(table, Path(args.runs_dir))
    except UserError:
        print(f"\nno stored runs under {Path(args.runs_dir) / table.name}: run `ablate run-all {table.name}` "
              "for per-stage times")
        return
    parts: dict[str, float] = {}
    for entry in stored.timing:
        for k, v in entry["prepare_parts"].items():
            parts[k] = parts.get(k, 0.0) + v
    stages = stored.stage_seconds[["train", "generate", "score", "probe"]].sum().to_dict()
    print(f"\nwall time per stage of the stored '{table.name}' runs ({len(stored.stage_seconds)} runs):")
    for k, v in {**parts, **stages}.items():
        print(f"  {k:15s} {v:8.1f} s")
    print(f"  {'total':15s} {sum(parts.values()) + sum(stages.values()):8.1f} s")

if __name__ == "__main__":
    main()
