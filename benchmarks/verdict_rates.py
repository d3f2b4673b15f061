"""Print the error rates of the report's seed-level rule (ablations/decide/rule_rates.py), each with its Monte Carlo
standard error, and whether the seeds of a table pair up across variants (are per-seed outcomes correlated?).
``--equivalence`` prints only the equivalence rule's rates as the markdown table of docs/how-reports-decide.md.

    python benchmarks/verdict_rates.py [--tables 100000] [--evidence reports/shapes/runs]
    python benchmarks/verdict_rates.py --equivalence [--equivalence-tables 20000]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ablations.decide import rule_rates
def show(label: str, r: tuple[float, float]) -> str:
    return f"{label}: {r[0]:.4f} ± {r[1]:.4f}"


def pairing(evidence: Path) -> None:
    """Correlation over seeds of each variant's per-run CIDEr with the reference's (seed k of every variant
    shares its data order and caption sampling): a paired analysis would help only if these are high."""
    runs = Path(evidence).parent / "runs.csv"
    if not runs.exists():
        print(f"(no {runs}: pairing not measured)")
        return
    table = pd.read_csv(runs)
    wide = table.pivot_table(index="seed", columns="variant", values="CIDEr")
    ref = wide.columns[0] if "full" not in wide else "full"
    print(f"\nper-seed CIDEr correlation with {ref} ({len(wide)} seeds, {runs}):")
    zs = []
    for v in wide.columns:
        if v != ref and wide[v].notna().sum() >= 3:
            r, p = stats.pearsonr(wide[ref], wide[v])
            zs.append(np.arctanh(np.clip(r, -0.999, 0.999)))
            print(f"  {v:>16}: r = {r:+.2f} (p = {p:.2f})")
    if zs and len(wide) > 3:  # variants share the reference, so this CI is too narrow if anything
        half = 1.96 / np.sqrt((len(wide) - 3) * len(zs))
        mean = float(np.mean(zs))
        print(f"  mean over variants (Fisher z): r = {np.tanh(mean):+.2f} [{np.tanh(mean - half):+.2f}, "
              f"{np.tanh(mean + half):+.2f}]")


MARGINS = (1.0, 2.0, 3.0)  # in seed SDs: flickr8k's meanpool margin (0.02 CIDEr) is about 1.1 of its floored SD
SEEDS = (3, 5, 8)


def equivalence_table(tables: int, rng: np.random.Generator) -> str:
    """The equivalence rule's rates (rule_rates.equivalence_rates: the report's own functions), as markdown."""
    rows = []
    for margin in MARGINS:
        cells = [rule_rates.equivalence_rates(rng, tables, n, margin, margin)["equivalent"] for n in SEEDS]
        rows.append((f"false \"equivalent\" at \\|Δ\\| = margin = {margin:g} SD", cells))
    for margin in MARGINS:
        cells = [rule_rates.equivalence_rates(rng, tables, n, 0.0, margin)["equivalent"] for n in SEEDS]
        rows.append((f"\"equivalent\" at Δ = 0 (power), margin {margin:g} SD", cells))
    cells = [rule_rates.equivalence_rates(rng, tables, n, 0.0, 2.0)["differs"] for n in SEEDS]
    rows.append(("false \"differs\" at Δ = 0, margin 2 SD", cells))
    lines = ["| seeds per variant | " + " | ".join(map(str, SEEDS)) + " |", "|---|" + "---|" * len(SEEDS)]
    lines += [f"| {label} | " + " | ".join(f"{r:.3f}" for r, _ in cells) + " |" for label, cells in rows]
    se = max(s for _, cells in rows for _, s in cells)
    return "\n".join(lines) + f"\n\n({tables:,} tables per cell; largest Monte Carlo SE {se:.4f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=int, default=100_000)
    ap.add_argument("--evidence", type=Path, default=Path("reports/shapes/runs"))
    ap.add_argument("--equivalence", action="store_true", help="only the equivalence rule's table (docs)")
    ap.add_argument("--equivalence-tables", type=int, default=20_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.equivalence:
        print(equivalence_table(args.equivalence_tables, rng))
        return
    print(f"share of {args.tables:,} simulated tables decided (a false positive, except under shift-4sd):")
    for name in ("normal", "sd-ratio-9", "bimodal", "lognormal", "shift-4sd"):
        for seeds in (3, 5, 8):
            out = rule_rates.scenario(name, seeds, args.tables, rng)
            print(f"  {name:>10}, {seeds} seeds: " + "; ".join(show(k, v) for k, v in out.items()))
    for seeds in (3, 5):
        print(show(f"one-sample t (a mean over seeds against a number), {seeds} seeds, null, decided",
                   rule_rates.one_sample_rate(rng, seeds, args.tables)))
    print("zero-spread seeds (no floor / floor 0.1), decided:",
          rule_rates.zero_spread_decides(rng, floor=0.0), rule_rates.zero_spread_decides(rng, floor=0.1))
    n = args.tables // 4
    print(show("budget section (2 ablations x 2 quantities x 4 budgets), any cell decided, Holm",
               rule_rates.budget_family(rng, n)))
    print(show("  the same, each cell its own 95% test", rule_rates.budget_family(rng, n, adjust=False)))
    for family in (1, 10, 25):
        print(show(f"power at a 4-SD shift, 5 seeds, Holm in a family of {family}",
                   rule_rates.power_in_family(rng, n, family)))
    for family in (1, 10, 25):
        print(show(f"power at a 2-SD shift, 5 seeds, Holm in a family of {family}",
                   rule_rates.power_in_family(rng, n, family, shift=2.0)))
    for rho in (0.0, 0.4, 0.8):
        for shift, label in ((0.0, "null"), (1.5, "1.5-SD shift")):
            out = rule_rates.pairing_rates(rng, n, 5, rho, shift)
            print(f"paired t vs Welch, 5 seeds, seed correlation {rho}, {label}: "
                  + "; ".join(show(k, v) for k, v in out.items()))
    pairing(args.evidence)


if __name__ == "__main__":
    main()
