"""What `train.length_grouped = true` saves: the LM positions of one epoch (exact, from the tokenizer) and the
time per training step, plain shuffled batches against length-grouped ones, side by side in one run (the
steps alternate, so both see the same machine load).

    python benchmarks/length_grouping.py [--table flickr8k-smollm2] [--steps 12] [--seed 0]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from ablations.run.runner import build_model, prepare
from ablations.tables import load_table
from vlm_core.train import _image_batches, token_length


def positions(model, batches, visual: int) -> tuple[int, int]:
    """(padded, real) LM positions over the batches: text tokens padded to each batch's longest + the visual tokens."""
    padded = real = 0
    for _, caps in batches:
        ids, mask, _ = model.text.encode(caps)
        padded += ids.numel() + visual * len(caps)
        real += int(mask.sum()) + visual * len(caps)
    return padded, real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="flickr8k-smollm2")
    ap.add_argument("--variant", default="full")
    ap.add_argument("--steps", type=int, default=12, help="timed steps of each kind, spread over the epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=".cache")
    args = ap.parse_args()
    table = load_table(args.table)
    variant = table.variants[args.variant]
    workspace = prepare(table, Path(args.cache_dir), splits=("train",), log=lambda *_: None)
    feats = workspace.features["train"]
    cfg = variant.train
    model = build_model(workspace, variant.model, args.seed)
    orders = {grouped: list(_image_batches(workspace.data, feats.ids, cfg.captions_per_image, cfg.batch_size,
                                            random.Random(args.seed), grouped, token_length(model)))
              for grouped in (False, True)}  # the epoch train_model would see with this seed
    print(f"{table.name} {args.variant}: {len(orders[False])} batches of {cfg.batch_size} x {cfg.captions_per_image} "
          f"captions per epoch, {torch.get_num_threads()} threads")
    with torch.no_grad():
        visual = model.connector(feats.batch([0]).to(workspace.device)).shape[1]  # visual tokens per caption
    counted = {g: positions(model, b, visual) for g, b in orders.items()}
    for grouped, (padded, real) in counted.items():
        print(f"  {'length-grouped' if grouped else 'plain shuffled':15s}: {padded:9,d} LM positions per epoch, "
              f"{real:9,d} real ({1 - real / padded:.1%} of them padding)")
    print(f"  positions ratio plain / grouped: {counted[False][0] / counted[True][0]:.2f}x")

    x_all = feats.in_ram()
    model.connector.fit_feature_stats(x_all)
    model.train_trainable_parts()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    def step(rows, caps) -> float:
        start = time.perf_counter()
        loss = model(x_all[torch.as_tensor(rows)], caps, repeats=cfg.captions_per_image)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for grouped in (False, True):  # untimed: the optimizer's state and first-call costs land on neither order
        step(*orders[grouped][-1])
    every = max(1, len(orders[False]) // args.steps)
    seconds = {False: [], True: []}
    for k in range(args.steps):
        for grouped in ((False, True) if k % 2 == 0 else (True, False)):  # which goes first alternates too
            seconds[grouped].append(step(*orders[grouped][(k * every) % len(orders[grouped])]))
    plain, grouped = (statistics.median(seconds[g]) for g in (False, True))
    n = len(orders[False])
    print(f"  median seconds per step over {args.steps} steps each (every {every}th batch of the epoch, alternating):")
    print(f"    plain shuffled: {plain:6.2f} s  (epoch ~{plain * n / 60:5.1f} min)")
    print(f"    length-grouped: {grouped:6.2f} s  (epoch ~{grouped * n / 60:5.1f} min)")
    print(f"  step-time ratio plain / grouped (medians): {plain / grouped:.2f}x; "
          f"means {sum(seconds[False]) / sum(seconds[True]):.2f}x")


if __name__ == "__main__":
    main()
