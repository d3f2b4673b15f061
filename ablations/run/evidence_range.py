"""Could the committed evidence have produced this run? A run made elsewhere (another device, precision or library
version: the GPU check) is compared with the evidence's runs of its variant, in units of their spread over seeds.

A quantity passes when the run lies inside the prediction interval for one more seed of its variant,
mean ± t(1 − α/2m, n − 1) · sd · √(1 + 1/n) over the evidence's n seeds, α = 0.05 shared by the m comparisons
made together (Bonferroni): a run that is merely another draw of the seed lottery passes, a broken device path
(captions gone, a probe off by many seed SDs) fails. The tolerance comes from the evidence, never a fixed number.
sd is floored by the image-level standard error where the quantity is a mean over images (as the report's
seed-level tests floor it); a quantity that no seed moved and no image varies (a blind model's NLL gap) must
agree exactly. The difference from the evidence's run of the same seed is shown too, in seed SDs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ablations.run.record import RunRecord, cell_path

ALPHA = 0.05


def quantities(record: RunRecord) -> dict[str, float]:
    """Every number a run reports: corpus metrics, slot scores and scalar probes (as `ablate verify` reads them)."""
    m = record.metrics()
    out = {**m["metrics"], **m.get("slots", {})}
    out.update({k: v for k, v in m["probes"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {k: float(v) for k, v in out.items()}


@dataclass
class Spread:
    """One variant's runs in the evidence: each seed's quantities, and the image-level SE of per-image ones."""

    seeds: dict[int, dict[str, float]]
    image_se: dict[str, float]

    @classmethod
    def of(cls, evidence: Path, variant: str, seeds: list[int]) -> Spread:
        found, se = {}, {}
        for seed in seeds:
            record = RunRecord(cell_path(evidence, variant, seed))
            if record.state() != "done" or "to_score" in record.metrics():
                continue
            found[seed] = quantities(record)
            frame = record.per_image()
            for column in frame.columns:
                values = frame[column].dropna().to_numpy(dtype=float)
                if len(values) > 1:
                    se.setdefault(column, []).append(float(np.std(values, ddof=1) / math.sqrt(len(values))))
        return cls(found, {k: float(np.mean(v)) for k, v in se.items()})


@dataclass
class Comparison:
    """One quantity of one run against its variant's seeds in the evidence."""

    label: str
    quantity: str
    value: float
    mean: float
    sd: float  # over the evidence's seeds, floored by the image-level SE
    seeds: int
    same_seed: float | None  # the evidence's run of the same seed, if there is one
    bound: float  # in sd units, around the mean
    ok: bool

    @property
    def seed_sds(self) -> float:
        """How far from the evidence's mean, in seed SDs (0 where both are exactly equal and sd is 0)."""
        if self.sd > 0:
            return (self.value - self.mean) / self.sd
        return 0.0 if self.value == self.mean else math.inf

    @property
    def same_seed_sds(self) -> float | None:
        if self.same_seed is None:
            return None
        if self.sd > 0:
            return (self.value - self.same_seed) / self.sd
        return 0.0 if self.value == self.same_seed else math.inf

    def row(self) -> dict:
        return {**asdict(self), "seed_sds": self.seed_sds, "same_seed_sds": self.same_seed_sds}

    def text(self) -> str:
        same = (f"; same seed {self.same_seed:.4g} (Δ {self.same_seed_sds:+.2f} SD)" if self.same_seed is not None
                else "")
        if self.sd == 0:
            return f"{self.quantity} {self.value:.4g} vs {self.mean:.4g} on every seed (no spread: exact){same}"
        return (f"{self.quantity} {self.value:.4g} vs {self.mean:.4g} ± {self.sd:.3g} over {self.seeds} seeds: "
                f"{self.seed_sds:+.2f} SD (bound ±{self.bound:.2f}){same}")


def bound(seeds: int, comparisons: int, alpha: float = ALPHA) -> float:
    """Half-width, in seed SDs, of the prediction interval for one more seed, Bonferroni over ``comparisons``."""
    if seeds < 2:
        raise ValueError("a seed spread needs at least 2 seeds in the evidence")
    return float(stats.t.ppf(1 - alpha / (2 * max(comparisons, 1)), seeds - 1) * math.sqrt(1 + 1 / seeds))


def compare(label: str, values: dict[str, float], seed: int, spread: Spread, names: list[str],
            comparisons: int) -> list[Comparison]:
    """The quantities ``names`` of one run against ``spread``; ``comparisons``: how many are made together."""
    out = []
    for q in names:
        xs = [s[q] for s in spread.seeds.values() if q in s and not math.isnan(s[q])]
        if q not in values or len(xs) < 2:
            continue
        sd = max(float(np.std(xs, ddof=1)), spread.image_se.get(q, 0.0))
        mean, half = float(np.mean(xs)), bound(len(xs), comparisons)
        ok = abs(values[q] - mean) <= half * sd if sd > 0 else values[q] == mean
        out.append(Comparison(label, q, values[q], mean, sd, len(xs), spread.seeds.get(seed, {}).get(q), half, ok))
    return out
