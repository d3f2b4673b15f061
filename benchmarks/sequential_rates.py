"""The sequential rule's simulation battery (ablations/decide/sequential.py, run on synthetic tables by
ablations/decide/sequential_rates.simulate): family-wise false positives of the whole procedure under the null
(normal, unequal SD, lognormal, bimodal collapse; a family of three), power against the fixed rule at 5 seeds,
seeds used, and the equivalence check; printed as the markdown tables of docs/how-reports-decide.md.

    python benchmarks/sequential_rates.py [--tables 40000] [--max-seeds 12]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ablations.decide import sequential
from ablations.decide.sequential_rates import Claim, fixed_decided, fixed_equivalent, null_data, simulate

SHAPES = {"O'Brien-Fleming (0)": 0.0, "between (0.25, default)": 0.25, "Pocock (0.5)": 0.5}
EFFECTS = (1.0, 1.5, 2.0, 3.0)  # in seed SDs
MARGINS = (1.0, 2.0)  # equivalence margins, in seed SDs


def rate(hits: np.ndarray) -> str:
    r = float(np.mean(hits))
    return f"{r:.3f} ± {np.sqrt(r * (1 - r) / hits.size):.3f}"


def seeds_used(sim, arms=("x", "y")) -> str:
    return f"{np.mean([sim.seeds[a] for a in arms]):.1f}"


def null_table(tables: int, plan: sequential.Plan, rng: np.random.Generator) -> list[str]:
    last = plan.schedule()[-1]
    lines = ["| under the null (no true difference) | sequential: any verdict decided | fixed 5 seeds | "
             "seeds per arm used (mean) |", "|---|---|---|---|"]
    one = [Claim("x", "y", "below")]
    for case in ("normal", "sd-ratio-9", "lognormal", "bimodal"):
        data, collapsed = null_data(case, tables, last, rng)
        sim = simulate(data, one, plan, collapsed)
        decided = np.isin(sim.words[one[0].key], ("held", "not held"))
        fixed = fixed_decided(data["x"][:, :5], data["y"][:, :5])
        if collapsed is not None:  # the fixed rule's guard: seeds that disagree in kind decide nothing
            c = collapsed["x"][:, :5]
            fixed &= ~(c.any(1) & ~c.all(1))
        lines.append(f"| {case}, one comparison | {rate(decided)} | {rate(fixed)} | {seeds_used(sim)} |")
    data = {a: rng.normal(0, 1, (tables, last)) for a in ("ref", "a", "b", "c")}
    family = [Claim("a", "ref", "below"), Claim("b", "ref", "below"), Claim("c", "ref", "above")]
    sim = simulate(data, family, plan)
    decided = np.any([np.isin(sim.words[c.key], ("held", "not held")) for c in family], axis=0)
    lines.append(f"| normal, a family of three against one reference (Holm) | {rate(decided)} | – | "
                 f"{seeds_used(sim, ('ref', 'a', 'b', 'c'))} |")
    return lines


def power_table(tables: int, max_seeds: int, rng: np.random.Generator) -> list[str]:
    lines = [f"| shift (seed SDs) | boundary | sequential: held | seeds per arm used (mean) | fixed 5 seeds: held | "
             f"fixed {max_seeds} seeds: held |", "|---|---|---|---|---|---|"]
    one = [Claim("x", "y", "below")]
    for effect in EFFECTS:
        x, y = rng.normal(-effect, 1, (tables, max_seeds)), rng.normal(0, 1, (tables, max_seeds))
        fixed = f"{rate(fixed_decided(x[:, :5], y[:, :5], 'below'))} | {rate(fixed_decided(x, y, 'below'))}"
        for name, shape in SHAPES.items():
            sim = simulate({"x": x, "y": y}, one, sequential.Plan(max_seeds=max_seeds, shape=shape))
            lines.append(f"| {effect:g} | {name} | {rate(sim.words[one[0].key] == 'held')} | {seeds_used(sim)} | "
                         f"{fixed} |")
    return lines


def equivalence_table(tables: int, plan: sequential.Plan, rng: np.random.Generator) -> list[str]:
    last = plan.schedule()[-1]
    lines = ["| equivalence, margin (seed SDs) | true Δ | sequential: 'equivalent' | fixed 5 seeds: 'equivalent' | "
             "seeds per arm used (mean) |", "|---|---|---|---|---|"]
    for margin in MARGINS:
        for shift, what in ((margin, "= margin (false)"), (0.0, "0 (power)")):
            x, y = rng.normal(shift, 1, (tables, last)), rng.normal(0, 1, (tables, last))
            claim = Claim("x", "y", "equivalent", margin)
            sim = simulate({"x": x, "y": y}, [claim], plan)
            lines.append(f"| {margin:g} | {what} | {rate(sim.words[claim.key] == 'equivalent')} | "
                         f"{rate(fixed_equivalent(x[:, :5], y[:, :5], margin))} | {seeds_used(sim)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=int, default=40_000)
    ap.add_argument("--max-seeds", type=int, default=12)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    plan = sequential.Plan(max_seeds=args.max_seeds)
    start = time.time()
    print(f"looks at {plan.schedule()} seeds per arm; nominal levels for one comparison "
          + ", ".join(f"{x:.4f}" for x in sequential.nominal_levels(plan, 1))
          + f"; {args.tables:,} tables per cell (± Monte Carlo SE)\n")
    for block in (null_table(args.tables, plan, rng), power_table(args.tables, args.max_seeds, rng),
                  equivalence_table(args.tables, plan, rng)):
        print("\n".join(block) + "\n")
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
