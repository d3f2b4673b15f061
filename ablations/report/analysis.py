"""From collected runs to everything a report says: summaries, losses, targets, the verdicts of
verdicts.py, diagnoses built from measured numbers only, evidence sizes. Numbers, never markdown."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from ablations.report.collect import XE_PREFIX, TableRuns
from ablations.report.formatting import fmt
from ablations.run.record import STAGES
from ablations.decide.stats import Interval, one_sample
from ablations.decide.verdicts import (COMPARED, Verdict, comparison_rows, expectations, grounding_verdicts, plan_swap,
                       reliance_verdicts, seed_interval, summarize, target_test, variants_where, verified_fingerprints,
                       verified_numerics)


# ---- measured descriptions of what variants produce
def pooled_mode(table_runs: TableRuns, v: str) -> tuple[str, float, int]:
    """The most frequent caption over every caption of every seed, its share, and the caption count."""
    caps = [c for seed_caps in table_runs.captions.get(v, {}).values() for c in seed_caps.values()]
    if not caps:
        return "", 0.0, 0
    caption, n = Counter(caps).most_common(1)[0]
    return caption, n / len(caps), len(caps)


def empty_by_length(table_runs: TableRuns, v: str, ref_length: pd.Series | None) -> tuple[float, float] | None:
    """Empty-caption rate (over seeds) on the third of images with the shortest / longest references."""
    seeds = table_runs.captions.get(v, {})
    if ref_length is None or not seeds:
        return None
    rate = pd.DataFrame({s: {i: float(not c.strip()) for i, c in caps.items()} for s, caps in seeds.items()}).mean(axis=1)
    lengths = ref_length.reindex(rate.index).dropna()
    if len(lengths) < 3:
        return None
    ranked = lengths.rank(method="first")
    third = len(ranked) // 3
    short, long = ranked.index[ranked <= third], ranked.index[ranked > len(ranked) - third]
    return float(rate[short].mean()), float(rate[long].mean())


def likelihood_rows(table_runs: TableRuns) -> list[dict]:
    """Likelihood swap per variant: seed-level mean gap with CI, and the per-image view of these models."""
    rows = []
    for v in table_runs.order:
        m = table_runs.matrix(v, "nll_gap")
        if m.empty:
            continue
        gap = m.mean(axis=1).dropna().to_numpy()
        p = 1.0 if np.allclose(gap, 0) else float(sps.wilcoxon(gap).pvalue)
        caption, share, n = pooled_mode(table_runs, v)
        rows.append({"variant": v, "seed": seed_interval(table_runs, v, "nll_gap"), "positive": float((gap > 0).mean()),
                     "p_images": p, "images": len(gap), "mode": caption, "mode_share": share, "captions": n})
    return rows


def eos_diagnosis(table_runs: TableRuns, v: str, s: pd.Series, by_length: tuple[float, float] | None) -> str:
    """An EOS collapse described by what was measured on the stored models."""
    recipe = table_runs.configs[v].get("model", {}).get("recipe", "fixed")
    start = "[visual][EOS]" if recipe == "seed" else "[visual][BOS]"
    a, b, c = s.get("p_eos_start", np.nan), s.get("p_eos_bos", np.nan), s.get("p_eos_after_eos", np.nan)
    text = (f"EOS collapse ({s['empty_rate']:.0%} empty captions, EOS the first token in {s['eos_first_rate']:.0%}). "
            f"Measured on the stored models (means over seeds, up to 200 images each): P(EOS) at the first "
            f"position is {fmt(a, 2)} from the prefix this variant generates from ({start}), {fmt(b, 2)} from the "
            f"correct [visual][BOS] prefix, and {fmt(c, 2)} right after the EOS that ends a caption.")
    if c >= 0.5:
        text += (f" Training taught it that EOS follows EOS (P = {fmt(c, 2)})"
                 + (": its labels keep the padding, which is EOS, as targets (recipe = seed)." if recipe == "seed" else "."))
    if recipe == "seed" and a - b >= 0.2:
        text += f" Starting from EOS is what ends the captions: from the correct prefix P(EOS) is {fmt(b, 2)}."
    elif a >= 0.5 and abs(a - b) < 0.2:
        text += " The start token is not the cause: the correct prefix ends captions about as often."
    per_seed = table_runs.seed_values(v, "empty_rate").sort_index()
    if len(per_seed) > 1 and ((per_seed >= 0.95) | (per_seed <= 0.05)).all() and per_seed.max() - per_seed.min() >= 0.9:
        text += (" The collapse is by seed, not by image: "
                 + ", ".join(f"seed {k} {r:.0%}" for k, r in per_seed.items()) + " empty.")
    elif by_length is not None and s["empty_rate"] < 0.95:
        short, long = by_length
        text += (f" The collapse is partial: {short:.0%} empty on the third of images with the shortest references, "
                 f"{long:.0%} on the third with the longest"
                 + (" (where captions run long, the EOS start less often ends them)." if short - long >= 0.1
                    else ", so caption length does not explain where it happens."))
    return text


def diagnose(table_runs: TableRuns, v: str, s: pd.Series, by_length: tuple[float, float] | None = None) -> str | None:
    """What is degenerate about a variant's captions, in measured numbers; None when they look healthy."""
    if s["empty_rate"] >= 0.5 or s["eos_first_rate"] >= 0.5:
        return eos_diagnosis(table_runs, v, s, by_length)
    caption, share, n = pooled_mode(table_runs, v)
    if share >= 0.5 or s["unique_share"] <= 0.05:
        return (f"mode collapse: {share:.0%} of all {n} captions ({len(table_runs.captions[v])} seeds) are “{caption}” "
                f"({s['unique_share']:.1%} unique per seed on average); the caption changes for "
                f"{s['swap_rate']:.1%} of swapped images (NLL gap {fmt(s['nll_gap'])} nats/token).")
    return None


def falls_every_epoch(history: list[pd.DataFrame], column: str) -> bool:
    """The mean over seeds falls from each history row to the next (epochs, and dev checks inside them)."""
    mean = mean_per_epoch(history)[column].values
    return bool(len(mean) > 1 and np.all(np.diff(mean) < 0))


# ---- inside the model: grounding of the queries, the LM's reading of the visual tokens
def grounding_rows(table_runs: TableRuns) -> list[dict]:
    rows = []
    for v in table_runs.order:
        if table_runs.matrix(v, "grounding_mass").empty:
            continue
        s = table_runs.runs[table_runs.runs["variant"] == v]
        rows.append({"variant": v, "mass": seed_interval(table_runs, v, "grounding_mass"),
                     "chance": float(s["grounding_chance"].mean()), "excess": seed_interval(table_runs, v, "grounding_excess"),
                     "ratio": float(s["grounding_ratio"].mean()), "entropy": float(s["query_entropy"].mean()),
                     "entropy_max": float(s["query_entropy_max"].mean()), "overlap": float(s["query_overlap"].mean())})
    return rows


def reliance_rows(table_runs: TableRuns) -> list[dict]:
    rows = []
    for v in table_runs.order:
        if table_runs.matrix(v, "visual_reliance").empty:
            continue
        s = table_runs.runs[table_runs.runs["variant"] == v]
        layers = sorted(c for c in s.columns if c.startswith("visual_reliance_layer_") and s[c].notna().any())
        rows.append({"variant": v, "share": seed_interval(table_runs, v, "visual_reliance"),
                     "layers": [float(s[c].mean()) for c in sorted(layers, key=lambda c: int(c.rsplit("_", 1)[1]))]})
    return rows


# ---- evidence
def run_rows(table_runs: TableRuns) -> pd.DataFrame:
    """runs.csv: one row per run, budget rows too, with the per-image means the seed-level tests compare."""
    runs = table_runs.runs.copy()
    for metric in COMPARED:
        frames = [table_runs.per_image[v][s].get(metric) for v, s in zip(runs["variant"], runs["seed"])]
        runs[f"{metric} (mean over images)"] = [f.mean() if f is not None else np.nan for f in frames]
        # the SE a run's mean has from its images: the floor under the seed SD is their root mean square per variant
        runs[f"{metric} (SE over images)"] = [f.std(ddof=1) / np.sqrt(f.notna().sum()) if f is not None and f.notna().sum() > 1
                                              else np.nan for f in frames]
    order = {v: k for k, v in enumerate(table_runs.table.variants)}
    return runs.sort_values(["variant", "seed"], key=lambda c: c.map(order) if c.name == "variant" else c)


PROVENANCE_KEYS = ["fingerprint", "code", "libraries", "device", "cpu", "threads", "determinism"]


def provenance_summary(table_runs: TableRuns) -> dict:
    """What made the runs, grouped by everything that can move their numbers; empty without provenance."""
    p = table_runs.provenance
    if p.empty:
        return {}
    groups = [{**dict(zip(PROVENANCE_KEYS, key)), "runs": len(g), "variants": list(dict.fromkeys(g["variant"]))}
              for key, g in p.groupby(PROVENANCE_KEYS, sort=False)]
    return {"groups": groups, "machines": p.groupby(["host", "cpu"]).ngroups, "fingerprints": p["fingerprint"].nunique(),
            "commits": p["code"].nunique(), "stale": [(x.variant, x.seed) for x in p[~p["current"]].itertuples()],
            "verified": set(p["fingerprint"]) <= verified_fingerprints(table_runs),
            "numerics": {label: list(dict.fromkeys(g["variant"])) for label, g in p.groupby("numerics", sort=False)},
            "numerics_verified": set(p["numerics"]) <= verified_numerics(table_runs)}


def evidence_sizes(table_runs: TableRuns) -> dict:
    """Size of the run records in the evidence: how many, KiB in all, per run (median) and the largest."""
    sizes = []
    for variant, seeds in table_runs.per_image.items():
        for seed in seeds:
            folder = table_runs.folder / variant / f"seed-{seed}"
            sizes.append(sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1024)
    s = pd.Series(sizes, dtype=float)
    return {"runs": len(s), "total_kib": float(s.sum()), "median_kib": float(s.median()) if len(s) else 0.0,
            "largest_kib": float(s.max()) if len(s) else 0.0}


# ---- everything the report says, computed once
GALLERY_SIZE = 6


@dataclass
class Analysis:
    """The numbers and verdicts of one table's report, computed once; the writer only formats them."""

    runs: TableRuns
    summary: pd.DataFrame
    missing: list[str]  # table rows without a finished run
    time: dict  # seconds in runs, shared preparation, run-all wall clock and its invocations
    targets: list[dict]
    parameters: list[dict]
    loss: list[dict]
    self_critical: list[dict]
    self_critical_gain: list[dict]  # per variant: each run's metrics before / after the self-critical epochs
    likelihood: list[dict]
    comparisons: dict[str, list[dict]]  # per compared quantity: one row per variant
    expectations: list[Verdict]
    plan_checks: dict | None
    budget_rows: list[dict]
    budget_points: dict  # quantity -> variant -> {epochs: Interval}: the budget figure's points
    budget_verdicts: list
    grounding: list[dict]
    grounding_verdicts: list[Verdict]
    reliance: list[dict]
    reliance_verdicts: list[Verdict]
    diagnoses: dict[str, str]
    gallery: dict  # seed, image ids, captions per variant
    stage_means: pd.DataFrame
    evidence_sizes: dict  # runs, total / median / largest KiB of the committed records
    provenance: dict  # grouped provenance rows, machines, code versions, commits, stale runs
    verification: list[dict]  # `ablate verify` checks stored with the evidence


def mean_per_epoch(histories: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean over seeds of each epoch's losses (one frame per seed)."""
    return pd.concat(histories).groupby("epoch").mean()


def time_spent(table_runs: TableRuns) -> dict:
    stages = table_runs.stage_seconds
    return {"run_seconds": float(stages[list(STAGES)].sum().sum()) if len(stages) else 0.0, "runs": len(stages),
            "prepare_seconds": float(sum(x["prepare_seconds"] for x in table_runs.timing)),
            "wall_seconds": float(sum(x.get("total_seconds", 0.0) for x in table_runs.timing)), "invocations": table_runs.timing}


def stage_time(stage_seconds: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per variant: its runs, the mean seconds of each stage, and its whole runs (the stages summed) from the
    fastest to the slowest, so a reader sees what one run costs and how much that varied (e.g. shared cores)."""
    if stage_seconds.empty:
        return pd.DataFrame()
    by_variant = stage_seconds.assign(whole=stage_seconds[list(STAGES)].sum(axis=1)).groupby("variant")
    out = by_variant[list(STAGES)].mean()
    out["runs"], out["whole_mean"] = by_variant.size(), by_variant.whole.mean()
    out["whole_min"], out["whole_max"] = by_variant.whole.min(), by_variant.whole.max()
    return out.reindex(order)


def target_rows(table_runs: TableRuns, wall_seconds: float) -> list[dict]:
    """Each [targets] line: a metric target is met when the reference's seed-level 95% CI lies above it, not
    met when below, undecided otherwise; the wall-time target on the recorded minutes."""
    ref, rows = table_runs.table.reference, []
    for key, goal in table_runs.table.targets.items():
        if key == "minutes":
            got = wall_seconds / 60
            rows.append({"key": key, "goal": goal, "got": got, "recorded": got > 0,
                         "decision": "met" if 0 < got <= goal else "not met", "gap": got - goal})
        elif ref in table_runs.order and key in table_runs.runs:
            t = target_test(table_runs, key, goal)
            rows.append({"key": key, "goal": goal, "got": t.interval.estimate, "interval": t.interval,
                         "recorded": True, "decision": {"held": "met", "not held": "not met"}.get(t.decision, "undecided"),
                         "gap": goal - t.interval.estimate})
        else:
            rows.append({"key": key, "goal": goal, "got": None, "recorded": False, "decision": "not met", "gap": None})
    return rows


def parameter_rows(table_runs: TableRuns) -> list[dict]:
    rows = []
    for v in table_runs.order:
        p = table_runs.params[v]
        trainable = sum(x["trainable"] for x in p.values())
        rows.append({"variant": v, "modules": p, "trainable": trainable,
                     "share": trainable / sum(x["trainable"] + x["frozen"] for x in p.values())})
    return rows


def loss_rows(table_runs: TableRuns) -> tuple[list[dict], list[dict]]:
    """Cross-entropy epochs (train and dev loss) and self-critical epochs (reward and dev loss), per variant."""
    loss, scst = [], []
    for v in table_runs.order:
        h = table_runs.histories[v]
        mean = mean_per_epoch(h)
        dev = list(mean["dev_loss"])
        loss.append({"variant": v, "epochs": [float(e) for e in mean.index], "train": list(mean["train_loss"]),
                     "dev": dev, "train_falls": falls_every_epoch(h, "train_loss"),
                     "dev_falls": falls_every_epoch(h, "dev_loss"),
                     "dev_last_change": dev[-1] - dev[-2] if len(dev) > 1 else None})
        if v in table_runs.scst_histories:
            mean = mean_per_epoch(table_runs.scst_histories[v])
            t = table_runs.table.variants[v].train
            scst.append({"variant": v, "epochs": [float(e) for e in mean.index], "reward": list(mean["reward"]),
                         "dev": list(mean["dev_loss"]),
                         "samples": t.scst_samples, "candidates": t.scst_candidates})
    return loss, scst


GAIN_METRICS = ("BLEU-4", "CIDEr")


def self_critical_gain(table_runs: TableRuns) -> list[dict]:
    """Per variant with self-critical epochs: each run's metrics from its cross-entropy model and its final one,
    and the mean gain over seeds with its 95% CI (final − cross-entropy, paired by run)."""
    out = []
    for v in table_runs.order:
        rows = table_runs.runs[table_runs.runs["variant"] == v]
        columns = [f"{XE_PREFIX}{m}" for m in GAIN_METRICS]
        if not set(columns) <= set(rows.columns) or rows[columns].isna().all().all():
            continue
        rows = rows.dropna(subset=columns)
        runs = [{"seed": int(r["seed"]), **{m: (float(r[f"{XE_PREFIX}{m}"]), float(r[m])) for m in GAIN_METRICS}}
                for _, r in rows.iterrows()]
        gain = {m: one_sample((rows[m] - rows[f"{XE_PREFIX}{m}"]).to_numpy()) for m in GAIN_METRICS}
        out.append({"variant": v, "runs": runs, "gain": gain})
    return out


def plan_checks(table_runs: TableRuns) -> dict | None:
    """The original plan's two checks on the reference: loss falls every epoch; the caption follows the image."""
    ref = table_runs.table.reference
    if ref not in table_runs.order:
        return None
    h = table_runs.histories[ref]
    swap = plan_swap(table_runs)
    return {"falls": falls_every_epoch(h, "train_loss") and falls_every_epoch(h, "dev_loss"),
            "swap": swap.decision, "swap_text": swap.text()}


def reference_lengths(table_runs: TableRuns) -> pd.Series | None:
    """Mean reference length in words per evaluation image (each run stores it), or None if no run has it."""
    for frames in table_runs.per_image.values():
        for frame in frames.values():
            if "ref_words" in frame:
                return frame["ref_words"]
    return None


GALLERY_RULE = ("one typical image (the reference's per-image CIDEr closest to its median), then the images "
                "where the per-image CIDEr of the variants expected to work (not the floor or collapsed ones) spreads "
                "most (max − min): where the ablations change the caption most")


def gallery(table_runs: TableRuns) -> dict:
    """The first seed's captions of GALLERY_SIZE evaluation images chosen by GALLERY_RULE, per variant, with
    each image's reason and its reference captions (when stored with the evidence)."""
    seed = table_runs.table.variants[table_runs.table.reference].seeds[0]
    caps = {v: table_runs.captions[v][seed] for v in table_runs.order if seed in table_runs.captions.get(v, {})}
    out = {"seed": seed, "ids": [], "captions": caps, "why": {}, "references": {}, "rule": GALLERY_RULE}
    common = [i for i in next(iter(caps.values()), {}) if all(i in c for c in caps.values())]
    cider = pd.DataFrame({v: table_runs.per_image[v][seed]["CIDEr"] for v in caps
                          if "CIDEr" in table_runs.per_image.get(v, {}).get(seed, {})}).reindex(common)
    ref = table_runs.table.reference
    if cider.empty or ref not in cider:
        out["ids"] = common[:GALLERY_SIZE]
        out["why"] = {i: "first images of the split (no per-image CIDEr)" for i in out["ids"]}
    else:
        typical = (cider[ref] - cider[ref].median()).abs().idxmin()
        working = [v for v in cider if not {"floor", "collapsed"} & set(table_runs.table.variants[v].expect)] or list(cider)
        spread = (cider[working].max(axis=1) - cider[working].min(axis=1)).drop(typical)
        spread = spread.sort_values(ascending=False, kind="stable")
        out["ids"] = [typical] + list(spread.index[: GALLERY_SIZE - 1])
        out["why"] = {typical: f"typical: {ref} CIDEr {cider.loc[typical, ref]:.2f} (median {cider[ref].median():.2f})"}
        out["why"].update({i: f"spread {spread[i]:.2f} (CIDEr {cider.loc[i, working].min():.2f} to "
                              f"{cider.loc[i, working].max():.2f})"
                           for i in out["ids"][1:]})
    out["references"] = {i: table_runs.references[i] for i in out["ids"] if i in table_runs.references}
    return out


def attention_gallery(table_runs: TableRuns) -> dict[str, dict[str, np.ndarray]]:
    """Stored Q-Former maps of the reference and of frozen-Q-Former variants, first seed: variant -> image -> maps."""
    seed = table_runs.table.variants[table_runs.table.reference].seeds[0]
    names = [table_runs.table.reference] + variants_where(table_runs, "model", "train_qformer", False)
    return {n: table_runs.attention_maps[n][seed] for n in names
            if n in table_runs.order and table_runs.attention_maps.get(n, {}).get(seed)}


def analyse(table_runs: TableRuns) -> Analysis:
    from ablations.decide import budgets
    summary = summarize(table_runs)
    spent = time_spent(table_runs)
    loss, scst = loss_rows(table_runs) if table_runs.order else ([], [])
    budget_rows = budgets.budget_rows(table_runs)
    ref_length = reference_lengths(table_runs)
    diagnoses = {}
    for v in table_runs.order:
        d = diagnose(table_runs, v, summary.loc[v], empty_by_length(table_runs, v, ref_length))
        if d:
            diagnoses[v] = d
    stage_means = stage_time(table_runs.stage_seconds, table_runs.order + table_runs.sweep_order)
    return Analysis(
        runs=table_runs, summary=summary, missing=[v for v in table_runs.table.variants if v not in table_runs.order + table_runs.sweep_order],
        time=spent, targets=target_rows(table_runs, spent["wall_seconds"]),
        parameters=parameter_rows(table_runs), loss=loss, self_critical=scst,
        self_critical_gain=self_critical_gain(table_runs), likelihood=likelihood_rows(table_runs),
        comparisons=comparison_rows(table_runs), expectations=expectations(table_runs), plan_checks=plan_checks(table_runs),
        budget_rows=budget_rows, budget_points=budgets.plotted_points(budget_rows), budget_verdicts=budgets.verdicts(table_runs),
        grounding=grounding_rows(table_runs), grounding_verdicts=grounding_verdicts(table_runs),
        reliance=reliance_rows(table_runs), reliance_verdicts=reliance_verdicts(table_runs), diagnoses=diagnoses,
        gallery=gallery(table_runs), stage_means=stage_means, evidence_sizes=evidence_sizes(table_runs),
        provenance=provenance_summary(table_runs),
        verification=table_runs.verification)
