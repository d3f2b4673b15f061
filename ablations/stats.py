"""Across-seed summaries and paired per-image tests against ``full`` (scipy.stats)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def mean_std(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean and std over seeds per variant: columns '<metric>' and '<metric>_std' (NaN for one seed)."""
    g = runs.groupby("variant", sort=False)[columns]
    mean, std = g.mean(), g.std(ddof=1)
    out = mean.copy()
    for c in columns:
        out[f"{c}_std"] = std[c]
    out["seeds"] = g.size()
    return out


def paired_difference(variant: np.ndarray, reference: np.ndarray, seed: int = 0,
                      n_resamples: int = 2000) -> dict:
    """Mean per-image difference variant - reference with a bootstrap 95% CI and Wilcoxon p."""
    diff = np.asarray(variant, dtype=float) - np.asarray(reference, dtype=float)
    if diff.size < 2 or np.allclose(diff, diff[0]):
        value = float(diff.mean()) if diff.size else 0.0
        return {"mean_diff": value, "ci_low": value, "ci_high": value,
                "p_wilcoxon": 1.0 if np.allclose(diff, 0) else 0.0, "n": int(diff.size)}
    boot = stats.bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=n_resamples,
                           method="percentile", random_state=np.random.default_rng(seed))
    p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return {"mean_diff": float(diff.mean()), "ci_low": float(boot.confidence_interval.low),
            "ci_high": float(boot.confidence_interval.high), "p_wilcoxon": p, "n": int(diff.size)}


def vs_reference(per_image: dict[str, pd.Series], reference: str = "full") -> pd.DataFrame:
    """``per_image[variant]``: per-image metric averaged over seeds (index = image id)."""
    rows = []
    if reference not in per_image:
        return pd.DataFrame(columns=["variant", "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "n"])
    ref = per_image[reference]
    for name, series in per_image.items():
        if name == reference:
            continue
        common = ref.index.intersection(series.index)
        rows.append({"variant": name, **paired_difference(series.loc[common].values, ref.loc[common].values)})
    return pd.DataFrame(rows)
