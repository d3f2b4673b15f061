"""Numbers as the reports print them, and markdown tables: shared by the report writer and the analysis
texts that carry numbers (plain text, no markdown)."""
from __future__ import annotations

import math

from ablations.decide.stats import Interval


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.2g}"


def fmt_ci(i: Interval, digits: int = 3) -> str:
    if not i.decided:
        return f"{fmt(i.estimate, digits)} (no CI: {i.n} seed{'s' if i.n != 1 else ''})"
    return f"{fmt(i.estimate, digits)} [{fmt(i.low, digits)}, {fmt(i.high, digits)}]"


def mean_sd(mean: float, sd: float, digits: int = 3) -> str:
    """'mean ± sd'; just the mean when there is no spread to show (a single seed)."""
    if sd is None or math.isnan(sd):
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(sd, digits)}"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def fmt_up(x, digits: int = 3) -> str:
    """``fmt`` rounded up, never down: for a bound that must hold at the printed number (a detectable difference)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return fmt(math.ceil(x * 10**digits - 1e-9) / 10**digits, digits)
