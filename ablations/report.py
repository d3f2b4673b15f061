"""`ablate report`: reports/<table>/README.md and PNGs, computed from stored runs only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from vlm_core.atomic import atomic_write, atomic_write_text
from vlm_core.errors import UserError

from .runner import load_data, run_dir, run_state
from .scoring import METRICS
from .stats import mean_std, vs_reference
from .tables import EXPECTATIONS, Table

PROBE_COLUMNS = ["swap_rate", "swap_mutual_bleu4", "nll_gap", "perceptual_score", "empty_rate",
                 "eos_first_rate", "unique_share", "distinct_1", "distinct_2", "mean_length"]
SLOT_COLUMNS = ["slot_colour", "slot_shape", "slot_size", "slot_count", "slot_relation"]
GALLERY_SIZE = 6


def collect(table: Table, runs_dir: Path) -> dict:
    """Every stored run of the table: finished ones with their metrics, failed ones with why."""
    rows, per_image, histories, params, failed, timings = [], {}, {}, {}, [], []
    for v in table.variants.values():
        for seed in table.seeds:
            path = run_dir(runs_dir, table, v.name, seed)
            state = run_state(path)
            if state == "failed":
                failed.append({"variant": v.name, "seed": seed,
                               "reason": json.loads((path / "FAILED").read_text())["reason"]})
                continue
            if state != "done":
                continue
            m = json.loads((path / "metrics.json").read_text())
            row = {"variant": v.name, "seed": seed, **m["metrics"], **m["slots"]}
            row.update({k: m["probes"][k] for k in PROBE_COLUMNS})
            row["top_caption"], row["top_caption_share"] = m["probes"]["top_caption"], m["probes"]["top_caption_share"]
            rows.append(row)
            per_image.setdefault(v.name, []).append(pd.read_csv(path / "per_image.csv", index_col=0))
            histories.setdefault(v.name, []).append(pd.DataFrame(json.loads((path / "history.json").read_text())))
            params.setdefault(v.name, json.loads((path / "params.json").read_text()))
            timings.append({"variant": v.name, "seed": seed, **m["timings"]})
    if not rows and not failed:
        raise UserError(f"{Path(runs_dir) / table.name}: no finished runs of table '{table.name}'; "
                        f"run `ablate run-all {table.name}` first")
    return {"runs": pd.DataFrame(rows), "per_image": per_image, "histories": histories, "params": params,
            "failed": failed, "timings": pd.DataFrame(timings)}


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _pm(mean: float, std: float, digits: int = 3) -> str:
    """'mean ± std'; just the mean when there is no spread to show (a single seed)."""
    if std is None or np.isnan(std):
        return _fmt(mean, digits)
    return f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def falls_every_epoch(history: list[pd.DataFrame], column: str) -> bool:
    mean = pd.concat(history).groupby("epoch")[column].mean().values
    return bool(len(mean) > 1 and np.all(np.diff(mean) < 0))


def verdict(table: Table, name: str, summary: pd.DataFrame, sig: pd.DataFrame) -> tuple[str, str]:
    """(held / not held / n/a, the numbers behind it) for a variant's expected outcome."""
    expect = table.variants[name].expect
    if name not in summary.index:
        return "n/a", "no finished run"
    s = summary.loc[name]
    full = summary.loc["full"] if "full" in summary.index else None
    sig_row = sig[sig.variant == name].iloc[0] if (not sig.empty and name in set(sig.variant)) else None
    if expect == "image_dependent":
        ok = s["swap_rate"] >= 0.9 and s["nll_gap"] > 0
        return _held(ok), f"swap rate {_fmt(s['swap_rate'])} (need ≥ 0.9), NLL gap {_fmt(s['nll_gap'])} nats/token (need > 0)"
    if expect == "worse_than_full":
        if sig_row is None:
            return "n/a", "no `full` runs to compare with"
        ok = sig_row["ci_high"] < 0
        return _held(ok), (f"ΔCIDEr vs full {_fmt(sig_row['mean_diff'])} [95% CI {_fmt(sig_row['ci_low'])}, "
                           f"{_fmt(sig_row['ci_high'])}], Wilcoxon p = {sig_row['p_wilcoxon']:.2g}")
    if expect == "uses_image_less":
        if full is None:
            return "n/a", "no `full` runs to compare with"
        ok = s["nll_gap"] < full["nll_gap"]
        return _held(ok), (f"NLL gap {_fmt(s['nll_gap'])} vs full {_fmt(full['nll_gap'])} nats/token; "
                           f"swap rate {_fmt(s['swap_rate'])} vs full {_fmt(full['swap_rate'])}")
    if expect == "floor":
        working = summary[(summary.index != name) & (summary["empty_rate"] < 0.5)]
        lowest_other = working["CIDEr"].min() if len(working) else np.nan
        ok = s["swap_rate"] <= 0.05 and (np.isnan(lowest_other) or s["CIDEr"] <= lowest_other)
        return _held(ok), (f"swap rate {_fmt(s['swap_rate'])} (need ≤ 0.05); CIDEr {_fmt(s['CIDEr'])} vs lowest "
                           f"other working variant {_fmt(lowest_other)}")
    if expect == "collapsed":
        ok = s["empty_rate"] >= 0.9
        return _held(ok), f"empty captions {s['empty_rate']:.1%} (need ≥ 90%), EOS first {s['eos_first_rate']:.1%}"
    return "n/a", EXPECTATIONS["none"]


def _held(ok: bool) -> str:
    return "**held**" if ok else "**not held**"


def diagnose(table: Table, name: str, s: pd.Series, by_length: tuple[float, float] | None = None) -> str | None:
    """A likely cause for a degenerate variant, or None when captions look healthy.

    ``by_length``: empty-caption rate on the images with the shortest and the longest references
    (lowest / highest third), to say where a partial collapse happens."""
    cfg = table.variants[name].model
    if s["empty_rate"] >= 0.5 or s["eos_first_rate"] >= 0.5:
        where = ""
        if by_length is not None and s["empty_rate"] < 0.95:
            short, long = by_length
            where = (f" The collapse is partial: {short:.0%} empty on the images with the shortest references "
                     f"(lowest third by mean reference length), {long:.0%} on those with the longest")
            where += (": where the training captions ran long, EOS as the first input did not end the caption."
                      if short - long >= 0.1 else ", so caption length does not explain where it happens.")
        if cfg.recipe == "seed":
            return (f"EOS collapse ({s['empty_rate']:.0%} empty, EOS first in {s['eos_first_rate']:.0%}): padding "
                    "labels were trained as EOS (pad = EOS kept in the loss), so the model learned 'EOS follows EOS'; "
                    "generation then starts from EOS, a start token training never used, and stops at once." + where)
        return (f"EOS collapse ({s['empty_rate']:.0%} empty): the model ends captions immediately; check the EOS target "
                "and the start token used in generation." + where)
    if s["top_caption_share"] >= 0.5 or s["unique_share"] <= 0.05:
        why = ("the visual tokens carry no image information, so only the language prior is left"
               if cfg.blind else "the caption depends little on the image")
        return (f"mode collapse: {s['top_caption_share']:.0%} of captions are “{s['top_caption']}” "
                f"({s['unique_share']:.1%} unique): {why}.")
    return None


def _loss_plot(histories: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for name, hs in histories.items():
        mean = pd.concat(hs).groupby("epoch").mean()
        axes[0].plot(mean.index, mean["train_loss"], marker="o", label=name)
        axes[1].plot(mean.index, mean["dev_loss"], marker="o", label=name)
    from matplotlib.ticker import MaxNLocator

    for ax, title in zip(axes, ["train loss", "dev loss (nats/token)"]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=90))
    plt.close(fig)


def _gallery(table: Table, runs_dir: Path, out_dir: Path, data_dir: str | None, names: list[str],
             thumbnails: bool) -> str:
    first_seed = table.seeds[0]
    caps = {}
    for n in names:
        path = run_dir(runs_dir, table, n, first_seed) / "captions.json"
        if path.exists():
            caps[n] = json.loads(path.read_text())
    if not caps:
        return "_no captions stored_"
    ids = list(next(iter(caps.values())))[:GALLERY_SIZE]
    data, note = None, ""
    if not thumbnails:
        note = (f"_Images named, not shown: {table.data.name} photos are third-party data and are not copied "
                "into the reports (`ablate report --thumbnails` writes them locally)._\n\n")
    else:
        try:
            data = load_data(table.data, data_dir)
        except UserError as err:
            note = f"_(thumbnails unavailable: {err})_\n\n"
    header = ["image"] + list(caps)
    rows = []
    if data is not None:
        (out_dir / "gallery").mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        cell = f"`{image_id}`"
        if data is not None and image_id in data.captions:
            img = data.load_image(image_id).resize((96, 96))
            thumb = out_dir / "gallery" / (Path(image_id).stem + ".png")
            atomic_write(thumb, lambda p: img.save(p, format="PNG"))
            cell = f"![{image_id}](gallery/{thumb.name})"
        rows.append([cell] + [f"{caps[n].get(image_id, '–') or '_(empty)_'}" for n in caps])
    return note + f"Seed {first_seed}, first {len(ids)} images of the {table.data.eval_split} split.\n\n" + _md_table(header, rows)


def write_report(table: Table, runs_dir: Path, out_root: Path, data_dir: str | None = None,
                 thumbnails: bool | None = None) -> Path:
    """``thumbnails=None``: gallery thumbnails only for data the project generates (shapes)."""
    thumbnails = table.data.name == "shapes" if thumbnails is None else thumbnails
    got = collect(table, Path(runs_dir))
    runs: pd.DataFrame = got["runs"]
    out_dir = Path(out_root) / table.name
    out_dir.mkdir(parents=True, exist_ok=True)
    order = [v for v in table.variants if v in set(runs["variant"])] if len(runs) else []
    has_slots = len(runs) and "slot_colour" in runs.columns
    metric_cols = METRICS + (["SPICE"] if "SPICE" in runs.columns else [])
    cols = metric_cols + PROBE_COLUMNS + (SLOT_COLUMNS if has_slots else [])
    cols = [c for c in cols if c in runs.columns]
    summary = mean_std(runs, cols).reindex(order) if len(runs) else pd.DataFrame()
    if len(runs):
        summary["top_caption"] = runs.groupby("variant")["top_caption"].agg(lambda x: x.mode().iloc[0]).reindex(order)
        summary["top_caption_share"] = runs.groupby("variant")["top_caption_share"].mean().reindex(order)
    per_image_cider = {n: pd.concat([f["CIDEr"] for f in frames], axis=1).mean(axis=1)
                       for n, frames in got["per_image"].items()}
    sig = vs_reference(per_image_cider, "full")
    cfg = _first_config(table, runs_dir, order)

    lines = [f"# Ablation report: `{table.name}`", "", table.description, "",
             f"Generated by `ablate report {table.name}` from the runs in `{Path(runs_dir) / table.name}`; "
             "every number below is computed from those stored runs.", ""]
    # ---- setup
    t = got["timings"]
    run_seconds = float(t[["train", "generate", "score", "probe"]].sum().sum()) if len(t) else 0.0
    prep = _prepare_seconds(runs_dir, table)
    wall = _wall_seconds(runs_dir, table)
    lines += ["## Setup", ""]
    n_images = json.loads((run_dir(runs_dir, table, order[0], table.seeds[0]) / "metrics.json").read_text())["images"] if order else 0
    setup = [
        ["data", f"{table.data.name} — scored on the **{table.data.eval_split}** split ({n_images} images, all references)"],
        ["vision backbone (frozen)", f"{table.backbones.vision} ({cfg.get('vision_tokens', '?')} tokens × {cfg.get('vision_dim', '?')})"],
        ["language backbone (frozen base)", table.backbones.language + _lm_note(cfg)],
        ["seeds", ", ".join(str(s) for s in table.seeds)],
        ["model (full)", _kv(cfg.get("model", {}))],
        ["training (full)", _kv(cfg.get("train", {}))],
        ["wall time", f"{run_seconds / 60:.1f} min in runs ({len(t)} runs) + {prep / 60:.1f} min shared preparation "
                      f"(features, LM); `run-all` wall clock "
                      + (f"{wall / 60:.1f} min" if wall
                         else "not recorded (no run-all finished)")],
        ["machine", cfg.get("machine", "?")],
    ]
    lines += [_md_table(["", ""], setup), ""]
    if table.notes:
        lines += ["Notes: " + table.notes.strip(), ""]
    lines += _targets(table, summary, wall or run_seconds + prep)
    # ---- failed runs
    if got["failed"]:
        lines += ["## Failed runs", "", _md_table(["variant", "seed", "reason"],
                                                 [[f["variant"], f["seed"], f["reason"]] for f in got["failed"]]), ""]
    # ---- parameters
    lines += ["## Trainable parameters", "", "Per module, seed-independent (trainable / frozen).", ""]
    modules = sorted({m for p in got["params"].values() for m in p})
    prow = []
    for n in order:
        p = got["params"][n]
        total_t = sum(x["trainable"] for x in p.values())
        total = sum(x["trainable"] + x["frozen"] for x in p.values())
        prow.append([n] + [f"{p[m]['trainable']:,} / {p[m]['frozen']:,}" if m in p else "–" for m in modules]
                    + [f"{total_t:,} ({total_t / total:.1%})"])
    lines += [_md_table(["variant"] + modules + ["trainable total"], prow), ""]
    # ---- loss
    lines += ["## Loss per epoch", "", "Mean over seeds (nats/token). ![loss](loss.png)", ""]
    lrows = []
    for n in order:
        mean = pd.concat(got["histories"][n]).groupby("epoch").mean()
        lrows.append([n, " → ".join(_fmt(x) for x in mean["train_loss"]), " → ".join(_fmt(x) for x in mean["dev_loss"]),
                      "yes" if falls_every_epoch(got["histories"][n], "train_loss") else "no",
                      "yes" if falls_every_epoch(got["histories"][n], "dev_loss") else "no"])
    lines += [_md_table(["variant", "train loss", "dev loss", "train falls every epoch", "dev falls every epoch"], lrows), ""]
    if got["histories"]:
        _loss_plot({n: got["histories"][n] for n in order}, out_dir / "loss.png")
    # ---- main table
    lines += ["## Main table", "", f"Mean ± std over seeds, {table.data.eval_split} split. Metrics: pycocoevalcap "
              "(PTB tokenizer; CIDEr is CIDEr-D).", ""]
    lines += [_md_table(["variant", "seeds"] + metric_cols,
                        [[n, int(summary.loc[n, "seeds"])] + [_pm(summary.loc[n, c], summary.loc[n, f"{c}_std"])
                                                              for c in metric_cols] for n in order]), ""]
    lines += ["Probes: generation swap (share of image pairs whose captions differ; mutual BLEU-4 of the pair), "
              "likelihood swap (NLL/token of the references given a swapped image minus given their own"
              + (f"; the first {table.probes.nll_refs} reference(s) of each image" if table.probes.nll_refs else "") + "), "
              "perceptual score (relative CIDEr drop under permuted images) and degeneracy.", ""]
    probe_cols = [c for c in PROBE_COLUMNS if c in summary.columns]
    lines += [_md_table(["variant"] + probe_cols,
                        [[n] + [_pm(summary.loc[n, c], summary.loc[n, f"{c}_std"]) for c in probe_cols] for n in order]), ""]
    lines += _likelihood_test(got["per_image"], summary, order)
    if has_slots:
        slot_cols = [c for c in SLOT_COLUMNS if c in summary.columns]
        lines += ["Slot accuracy (parsed from the caption against the structured labels; relation on two-object images).", ""]
        lines += [_md_table(["variant"] + slot_cols,
                            [[n] + [_pm(summary.loc[n, c], summary.loc[n, f"{c}_std"]) for c in slot_cols] for n in order]), ""]
    # ---- significance
    lines += ["## Significance vs `full`", "",
              "Per-image CIDEr averaged over seeds; difference variant − full with a bootstrap 95% CI "
              "(2000 resamples) and a Wilcoxon signed-rank p-value.", ""]
    lines += [_md_table(["variant", "ΔCIDEr", "95% CI", "Wilcoxon p", "images"],
                        [[r.variant, _fmt(r.mean_diff), f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]", f"{r.p_wilcoxon:.2g}", r.n]
                         for r in sig.itertuples()]) if len(sig) else "_no `full` runs: nothing to compare_", ""]
    # ---- expected vs observed
    lines += ["## Expected vs observed", ""]
    erows = []
    for n in table.variants:
        v = verdict(table, n, summary, sig) if len(summary) else ("n/a", "no finished run")
        erows.append([n, table.variants[n].expected, v[0], v[1]])
    lines += [_md_table(["variant", "expected", "verdict", "numbers"], erows), ""]
    lines += _plan_checks(table, got, summary, sig, order)
    # ---- diagnosis
    lines += ["## Diagnosis of degenerate variants", ""]
    ref_length = _reference_lengths(table, data_dir)
    diags = [(n, diagnose(table, n, summary.loc[n], _empty_by_length(table, runs_dir, n, ref_length))) for n in order]
    diags = [(n, d) for n, d in diags if d]
    lines += [f"- **{n}**: {d}" for n, d in diags] if diags else ["No variant is degenerate."]
    lines += [""]
    # ---- gallery
    lines += ["## Gallery", "", _gallery(table, runs_dir, out_dir, data_dir, order, thumbnails), ""]
    # ---- timings
    if len(t):
        mean_t = t.groupby("variant")[["train", "generate", "score", "probe"]].mean().reindex(order)
        lines += ["## Time per stage", "", "Mean seconds per run.", "",
                  _md_table(["variant", "train", "generate", "score", "probe"],
                            [[n] + [f"{mean_t.loc[n, c]:.1f}" for c in mean_t.columns] for n in order]), ""]
    path = out_dir / "README.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    summary_out = summary.drop(columns=[c for c in ("top_caption",) if c in summary.columns])
    atomic_write(out_dir / "summary.csv", lambda p: summary_out.to_csv(p, float_format="%.6g"))
    return path


def _reference_lengths(table: Table, data_dir: str | None) -> pd.Series | None:
    """Mean reference length in words per evaluation image, or None when the data cannot be read."""
    try:
        data = load_data(table.data, data_dir)
    except (UserError, OSError):
        return None
    ids = data.splits[table.data.eval_split]
    return pd.Series({i: np.mean([len(c.split()) for c in data.captions[i]]) for i in ids})


def _empty_by_length(table: Table, runs_dir: Path, name: str, ref_length: pd.Series | None) -> tuple[float, float] | None:
    """Empty-caption rate (over seeds) on the third of images with the shortest / longest references."""
    if ref_length is None:
        return None
    empty = []
    for seed in table.seeds:
        path = run_dir(runs_dir, table, name, seed) / "captions.json"
        if run_state(path.parent) == "done":
            caps = json.loads(path.read_text())
            empty.append(pd.Series({i: float(not c.strip()) for i, c in caps.items()}))
    if not empty:
        return None
    rate = pd.concat(empty, axis=1).mean(axis=1)
    lengths = ref_length.reindex(rate.index).dropna()
    if len(lengths) < 3:
        return None
    ranked = lengths.rank(method="first")
    third = len(ranked) // 3
    short, long = ranked.index[ranked <= third], ranked.index[ranked > len(ranked) - third]
    return float(rate[short].mean()), float(rate[long].mean())


def _likelihood_test(per_image: dict, summary: pd.DataFrame, order: list[str]) -> list[str]:
    """Paired test of the likelihood swap: per-image NLL gap (averaged over seeds) against 0, and the mode caption."""
    rows = []
    for n in order:
        frames = [f["nll_gap"] for f in per_image.get(n, []) if "nll_gap" in f]
        if not frames:
            continue
        gap = pd.concat(frames, axis=1).mean(axis=1).dropna().values
        p = 1.0 if np.allclose(gap, 0) else float(stats.wilcoxon(gap).pvalue)
        rows.append([n, _fmt(float(gap.mean())), f"{(gap > 0).mean():.1%}", f"{p:.2g}", len(gap),
                     f"“{summary.loc[n, 'top_caption'] or '(empty)'}” ({summary.loc[n, 'top_caption_share']:.1%})"])
    if not rows:
        return []
    return ["Likelihood swap per image (NLL gap averaged over seeds; Wilcoxon signed-rank test against 0) and "
            "the most frequent caption with its share (mean over seeds).", "",
            _md_table(["variant", "mean NLL gap", "images with gap > 0", "Wilcoxon p", "images", "most frequent caption"],
                      rows), ""]


def _plan_checks(table, got, summary, sig, order) -> list[str]:
    """The researcher's three planned checks, each with a computed answer."""
    if "full" not in order:
        return []
    out = ["### The original plan's checks", ""]
    falls = falls_every_epoch(got["histories"]["full"], "train_loss") and falls_every_epoch(got["histories"]["full"], "dev_loss")
    out.append(f"- Loss falls every epoch (full, train and dev): **{'yes' if falls else 'no'}**.")
    s = summary.loc["full"]
    out.append(f"- Changing the image changes the caption (full): **{'yes' if s['swap_rate'] >= 0.9 else 'no'}** — "
               f"{s['swap_rate']:.1%} of swapped pairs get different captions; NLL gap {_fmt(s['nll_gap'])} nats/token.")
    if "frozen-qformer" in order and len(sig):
        r = sig[sig.variant == "frozen-qformer"].iloc[0]
        hurt = r.ci_high < 0
        out.append(f"- Freezing the Q-Former hurts: **{'yes' if hurt else 'no'}** — ΔCIDEr {_fmt(r.mean_diff)} "
                   f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}].")
    return out + [""]


def _first_config(table: Table, runs_dir: Path, order: list[str]) -> dict:
    for n in (["full"] if "full" in order else []) + order:
        path = run_dir(runs_dir, table, n, table.seeds[0]) / "config.json"
        if path.exists():
            return json.loads(path.read_text())
    return {}


def _prepare_seconds(runs_dir: Path, table: Table) -> float:
    path = Path(runs_dir) / table.name / "timing.json"
    if not path.exists():
        return 0.0
    return float(sum(x["prepare_seconds"] for x in json.loads(path.read_text())))


def _wall_seconds(runs_dir: Path, table: Table) -> float:
    """Summed wall time of the ``run-all`` invocations that wrote this table (resumes included)."""
    path = Path(runs_dir) / table.name / "timing.json"
    if not path.exists():
        return 0.0
    return float(sum(x.get("total_seconds", 0.0) for x in json.loads(path.read_text())))


def _targets(table: Table, summary: pd.DataFrame, wall_s: float) -> list[str]:
    """Each ``[targets]`` line of the table with the measured number and met / not met."""
    if not table.targets:
        return []
    rows = []
    for key, goal in table.targets.items():
        if key == "minutes":
            got = wall_s / 60
            met = 0 < got <= goal
            rows.append([f"whole table wall time ≤ {goal:g} min", f"{got:.1f} min",
                         "met" if met else f"**not met** (over by {got - goal:.1f} min)"])
        elif "full" in summary.index and key in summary.columns:
            got = float(summary.loc["full", key])
            met = got >= goal
            rows.append([f"`full` {key} ≥ {goal:g}", _pm(got, float(summary.loc["full", f"{key}_std"])),
                         "met" if met else f"**not met** (short by {goal - got:.3f})"])
        else:
            rows.append([f"`full` {key} ≥ {goal:g}", "no finished `full` run", "**not met**"])
    return ["## Targets", "", f"Set in the table file; numbers from the {table.data.eval_split} split "
            "(mean ± std over seeds).", "", _md_table(["target", "measured", "verdict"], rows), ""]


def _lm_note(cfg: dict) -> str:
    info = cfg.get("lm_info", {})
    if "dev_perplexity" in info:
        c = info["config"]
        packing = (f", packed in {c['pack_length']}-token rows with one document per training image"
                   if c.get("pack_length") else ", one caption per row")
        if c.get("freeze_embeddings"):
            packing += ", word embeddings kept at their random init (only [pad]/[bos]/[eos] learned)"
        return (f" ({c['n_layer']}×{c['n_embd']}, vocab {info['vocab_size']}, pretrained on {info['train_captions']} "
                f"training captions as text{packing}; dev perplexity {info['dev_perplexity']:.2f})")
    return ""


def _kv(d: dict) -> str:
    skip = {"debug_nan_at_step", "seed_pad_length", "generate_batch_size"}
    shown = {k: v for k, v in d.items() if k not in skip and not (k == "lora_targets" and not v)}  # [] = LM default
    return ", ".join(f"{k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in shown.items())
