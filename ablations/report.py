"""`ablate report`: reports/<table>/README.md, plots and gallery, from stored runs only.

collect.py reads the runs, analysis.py turns them into numbers and verdicts, this module writes.
Each section is one function; to show another probe column, add its name to PROBE_COLUMNS.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from vlm_core.atomic import atomic_write, atomic_write_text
from vlm_core.errors import UserError

from . import analysis as an
from . import budgets
from .analysis import fmt, fmt_ci, fmt_p
from .collect import TableRuns, collect
from .record import code_label, code_version, run_path
from .runner import load_data
from .scoring import METRICS
from .tables import Table

PROBE_COLUMNS = ["swap_rate", "swap_mutual_bleu4", "nll_gap", "perceptual_score", "empty_rate",
                 "eos_first_rate", "unique_share", "distinct_1", "distinct_2", "mean_length"]
SLOT_COLUMNS = ["slot_colour", "slot_shape", "slot_size", "slot_count", "slot_relation"]
STAGES = ["train", "generate", "score", "probe"]
GALLERY_SIZE = 6


@dataclass
class Context:
    table: Table
    tr: TableRuns
    summary: pd.DataFrame
    out_dir: Path
    data_dir: str | None
    thumbnails: bool
    cache_dir: Path = Path(".cache")  # where the stored runs' caption LM lives (for attention maps)

    @property
    def order(self) -> list[str]:
        return self.tr.order

    @property
    def ref(self) -> str:
        return self.table.reference

    @cached_property
    def data(self):
        """The table's data set (for thumbnails, maps and reference lengths), loaded once; None if unreadable."""
        try:
            return load_data(self.table.data, self.data_dir)
        except (UserError, OSError):
            return None


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def pm(mean: float, std: float, digits: int = 3) -> str:
    """'mean ± std'; just the mean when there is no spread to show (a single seed)."""
    if std is None or np.isnan(std):
        return fmt(mean, digits)
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def _pm_row(ctx: Context, n: str, cols: list[str]) -> list[str]:
    return [pm(ctx.summary.loc[n, c], ctx.summary.loc[n, f"{c}_std"]) for c in cols]


def wall_seconds(tr: TableRuns) -> float:
    """Summed wall time of the `run-all` invocations that wrote this table (resumes included)."""
    return float(sum(x.get("total_seconds", 0.0) for x in tr.timing))


# ---- sections
def section_setup(ctx: Context) -> list[str]:
    t, tr = ctx.table, ctx.tr
    cfg = tr.configs.get(ctx.ref) or (next(iter(tr.configs.values())) if tr.configs else {})
    n_images = int(tr.runs["images"].iloc[0]) if len(tr.runs) else 0
    run_s = float(tr.stage_seconds[STAGES].sum().sum()) if len(tr.stage_seconds) else 0.0
    prep = float(sum(x["prepare_seconds"] for x in tr.timing))
    wall = wall_seconds(tr)
    if t.data.train_images:
        training_data = f"the first {t.data.train_images:,} images of the train split (`data.train_images`)"
    else:
        training_data = "every image of the train split"
        if ctx.data is not None:
            training_data += f" ({len(ctx.data.splits['train']):,})"
    rows = [
        ["data", f"{t.data.name} — scored on the **{t.data.eval_split}** split ({n_images} images, all references)"],
        ["training data", training_data],
        ["vision backbone (frozen)", f"{t.backbones.vision} ({cfg.get('vision_tokens', '?')} tokens × {cfg.get('vision_dim', '?')})"],
        ["language backbone (frozen base)", t.backbones.language + _lm_note(cfg)],
        ["seeds", ", ".join(str(s) for s in t.seeds)],
        ["reference variant", f"`{ctx.ref}` (every comparison is variant − {ctx.ref})"],
        [f"model ({ctx.ref})", _kv(cfg.get("model", {}))],
        [f"training ({ctx.ref})", _kv(cfg.get("train", {}))],
        ["wall time", f"{run_s / 60:.1f} min in runs ({len(tr.stage_seconds)} runs) + {prep / 60:.1f} min shared "
                      f"preparation (features, LM); `run-all` wall clock {wall / 60:.1f} min over {len(tr.timing)} "
                      "invocation(s): " + "; ".join(f"{x['total_seconds'] / 60:.1f} min for {x['runs']} run(s) "
                                                    f"(started {x['when']})" for x in tr.timing)
         if tr.timing else f"{run_s / 60:.1f} min in runs; `run-all` wall clock not recorded"],
    ]
    missing = [v for v in t.variants if v not in tr.order + tr.sweep_order]
    if missing:
        rows.append(["not run yet", ", ".join(f"`{v}`" for v in missing) + f" (no finished run: `ablate run-all "
                     f"{t.name}` resumes; every section below covers the finished runs only)"])
    lines = ["## Setup", "", md_table(["", ""], rows), ""]
    return lines + (["Notes: " + t.notes.strip(), ""] if t.notes else [])


def section_provenance(ctx: Context) -> list[str]:
    p = ctx.tr.provenance
    if p.empty:
        return []
    groups = p.groupby(["code", "libraries", "device", "machine"], sort=False)
    rows = [[f"`{code}`", libs, device, machine, len(g), ", ".join(dict.fromkeys(g["variant"]))]
            for (code, libs, device, machine), g in groups]
    lines = ["## Provenance", "", "What made the runs behind this report (from each run's config.json). "
             f"This report was written by code `{code_label(code_version())}`.", "",
             md_table(["code version", "libraries", "device", "machine", "runs", "variants"], rows), ""]
    if p["code"].nunique() > 1:
        lines += [f"**Warning: the runs come from {p['code'].nunique()} code versions**; differences between "
                  "variants may partly be differences between code versions.", ""]
    stale = p[~p["current"]]
    if len(stale):
        lines += [f"**Warning: {len(stale)} stale run(s)**, made with settings that differ from the table's now: "
                  + ", ".join(f"{r.variant} seed {r.seed}" for r in stale.itertuples())
                  + " (`ablate run-all` redoes them unless told `--keep-stale`).", ""]
    else:
        lines += ["Every run's stored config hash matches the table's current settings.", ""]
    return lines


def section_targets(ctx: Context) -> list[str]:
    """Each ``[targets]`` line with the measured number and met / not met."""
    if not ctx.table.targets:
        return []
    rows = []
    for key, goal in ctx.table.targets.items():
        if key == "minutes":
            got = wall_seconds(ctx.tr) / 60
            verdict = ("**not met** (no `run-all` wall time recorded)" if got == 0 else "met" if got <= goal
                       else f"**not met** (over by {got - goal:.1f} min)")
            rows.append([f"whole table wall time ≤ {goal:g} min", f"{got:.1f} min", verdict])
        elif ctx.ref in ctx.summary.index and key in ctx.summary.columns:
            got = float(ctx.summary.loc[ctx.ref, key])
            rows.append([f"`{ctx.ref}` {key} ≥ {goal:g}", pm(got, float(ctx.summary.loc[ctx.ref, f"{key}_std"])),
                         "met" if got >= goal else f"**not met** (short by {goal - got:.3f})"])
        else:
            rows.append([f"`{ctx.ref}` {key} ≥ {goal:g}", f"no finished `{ctx.ref}` run", "**not met**"])
    return ["## Targets", "", f"Set in the table file; numbers from the {ctx.table.data.eval_split} split "
            "(mean ± std over seeds).", "", md_table(["target", "measured", "verdict"], rows), ""]


def section_failed(ctx: Context) -> list[str]:
    if not ctx.tr.failed:
        return []
    return ["## Failed runs", "", md_table(["variant", "seed", "reason"],
                                          [[f["variant"], f["seed"], f["reason"]] for f in ctx.tr.failed]), ""]


def section_parameters(ctx: Context) -> list[str]:
    params = ctx.tr.params
    modules = sorted({m for p in params.values() for m in p})
    rows = []
    for n in ctx.order:
        p = params[n]
        trainable = sum(x["trainable"] for x in p.values())
        total = sum(x["trainable"] + x["frozen"] for x in p.values())
        rows.append([n] + [f"{p[m]['trainable']:,} / {p[m]['frozen']:,}" if m in p else "–" for m in modules]
                    + [f"{trainable:,} ({trainable / total:.1%})"])
    return ["## Trainable parameters", "", "Per module, seed-independent (trainable / frozen).", "",
            md_table(["variant"] + modules + ["trainable total"], rows), ""]


def section_loss(ctx: Context) -> list[str]:
    rows = []
    for n in ctx.order:
        h = ctx.tr.histories[n]
        mean = pd.concat(h).groupby("epoch").mean()
        rows.append([n, " → ".join(fmt(x) for x in mean["train_loss"]), " → ".join(fmt(x) for x in mean["dev_loss"]),
                     "yes" if an.falls_every_epoch(h, "train_loss") else "no",
                     "yes" if an.falls_every_epoch(h, "dev_loss") else "no"])
    if ctx.tr.histories:
        _loss_plot({n: ctx.tr.histories[n] for n in ctx.order}, ctx.out_dir / "loss.png")
    lines = ["## Loss per epoch", "", "Mean over seeds (nats/token). ![loss](loss.png)", "",
             md_table(["variant", "train loss", "dev loss", "train falls every epoch", "dev falls every epoch"], rows), ""]
    scst = {n: ctx.tr.scst_histories[n] for n in ctx.order if n in ctx.tr.scst_histories}
    if scst:
        rows = []
        for n, h in scst.items():
            mean = pd.concat(h).groupby("epoch").mean()
            rows.append([n, " → ".join(f"{x:.3f}" for x in mean["reward"]), " → ".join(fmt(x) for x in mean["dev_loss"])])
        candidates = set()
        for n in scst:
            t = ctx.table.variants[n].train
            candidates.add(f"the {t.scst_samples} beams of a beam search of each training image"
                           if t.scst_candidates == "beam" else f"the {t.scst_samples} captions sampled from each training image")
        lines += ["Self-critical epochs after the cross-entropy ones (mean over seeds): the reward is the mean "
                  f"CIDEr-D of {' / '.join(sorted(candidates))}, against its training references; the "
                  "dev loss is the same reference NLL as above.", "",
                  md_table(["variant", "mean candidate CIDEr-D", "dev loss"], rows), ""]
    return lines


def section_main(ctx: Context) -> list[str]:
    s = ctx.summary
    metric_cols = METRICS + (["SPICE"] if "SPICE" in s.columns else [])
    probe_cols = [c for c in PROBE_COLUMNS if c in s.columns]
    lines = ["## Main table", "", f"Mean ± std over seeds, {ctx.table.data.eval_split} split. Metrics: pycocoevalcap "
             "(PTB tokenizer; CIDEr is CIDEr-D).", "",
             md_table(["variant", "seeds"] + metric_cols, [[n, int(s.loc[n, "seeds"])] + _pm_row(ctx, n, metric_cols)
                                                            for n in ctx.order]), "",
             "Probes: generation swap (share of image pairs whose captions differ; mutual BLEU-4 of the pair), "
             "likelihood swap (NLL/token of the references given a swapped image minus given their own"
             + (f"; the first {ctx.table.probes.nll_refs} reference(s) of each image" if ctx.table.probes.nll_refs else "")
             + "), perceptual score (relative CIDEr drop under permuted images) and degeneracy.", "",
             md_table(["variant"] + probe_cols, [[n] + _pm_row(ctx, n, probe_cols) for n in ctx.order]), ""]
    lines += section_likelihood(ctx)
    slot_cols = [c for c in SLOT_COLUMNS if c in s.columns]
    if slot_cols:
        lines += ["Slot accuracy (parsed from the caption against the structured labels; relation on two-object "
                  "images).", "", md_table(["variant"] + slot_cols, [[n] + _pm_row(ctx, n, slot_cols) for n in ctx.order]), ""]
    return lines


def section_likelihood(ctx: Context) -> list[str]:
    rows = [[r["variant"], fmt_ci(r["seed"]), f"{r['positive']:.1%}", fmt_p(r["p_images"]), r["images"],
             f"“{r['mode'] or '(empty)'}” ({r['mode_share']:.1%} of {r['captions']})"] for r in an.likelihood_rows(ctx.tr)]
    if not rows:
        return []
    return ["Likelihood swap: the mean NLL gap over seeds with its seed-level 95% CI; then, for these trained "
            "models, the share of images whose gap (averaged over seeds) is positive and a Wilcoxon signed-rank "
            "test over images. The most frequent caption is counted over every caption of every seed.", "",
            md_table(["variant", "NLL gap [95% CI, seeds]", "images with gap > 0", "Wilcoxon p (images)", "images",
                      "most frequent caption"], rows), ""]


def section_comparisons(ctx: Context) -> list[str]:
    lines = [f"## Comparisons with `{ctx.ref}`", "",
             "**Seed level** (what verdicts use): each run reduced to its mean over images, variant − reference "
             "compared with Welch's t over seeds (95% CI, p). **Image level** (these trained models only): "
             "per-image values averaged over seeds, bootstrap 95% CI over images and Wilcoxon p; it says whether "
             "these particular models differ, not whether the architectures do.", ""]
    notes = []
    for metric in an.COMPARED:
        comps = an.comparisons(ctx.tr, metric)
        if not comps:
            continue
        rows = []
        for v, c in comps.items():
            i = c.image
            seed_verdict = an.decide(c.seed, 0.0, "below")
            rows.append([v, fmt_ci(c.seed), fmt_p(c.seed.p), f"{c.seed.n}", fmt(c.sd_variant), fmt(c.sd_reference),
                         "differ" if seed_verdict != "inconclusive" else "**inconclusive**",
                         c.seeds_needed if c.seeds_needed else "–",
                         f"{fmt(i['mean_diff'])} [{fmt(i['ci_low'])}, {fmt(i['ci_high'])}]", fmt_p(i["p_wilcoxon"])])
            image_differs = not (np.isnan(i["ci_low"]) or i["ci_low"] <= 0 <= i["ci_high"])
            if image_differs and seed_verdict == "inconclusive":
                notes.append(f"- {an.COMPARED[metric]}, `{v}`: these trained models differ (image-level CI "
                             f"{fmt(i['ci_low'])} to {fmt(i['ci_high'])}), but that is **not a seed-level difference**"
                             f"{an.undecided_note(c)}.")
        lines += [f"### Δ{an.COMPARED[metric]}", "",
                  md_table(["variant", "Δ [95% CI, seeds]", "Welch p", "seeds", "SD variant", f"SD {ctx.ref}",
                            "seeds decide", "seeds needed (80% power)", "Δ [95% CI, images]", "Wilcoxon p (images)"],
                           rows), ""]
    return lines + (notes + [""] if notes else [])


def section_expectations(ctx: Context) -> list[str]:
    rows = [[v.variant, v.expected, v.expectation, f"**{v.verdict}**" if v.verdict != "n/a" else "n/a", v.numbers]
            for v in an.expectations(ctx.tr)]
    lines = ["## Expected vs observed", "", "Each expectation is tested by its rule at seed level (95% CIs over "
             "training runs); **inconclusive** means the seeds cannot decide it.", "",
             md_table(["variant", "expected", "rule", "verdict", "numbers"], rows), ""]
    if ctx.ref in ctx.order:
        h = ctx.tr.histories[ctx.ref]
        falls = an.falls_every_epoch(h, "train_loss") and an.falls_every_epoch(h, "dev_loss")
        swap, swap_text = an.threshold(ctx.tr, ctx.ref, "swap_rate", 0.9, "above", "swap rate")
        lines += ["### The original plan's checks", "",
                  f"- Loss falls every epoch ({ctx.ref}, train and dev, mean over seeds): **{'yes' if falls else 'no'}**.",
                  f"- Changing the image changes the caption ({ctx.ref}): **{swap}** — {swap_text}.", ""]
    return lines


def _verdict_rows(verdicts) -> list[list[str]]:
    return [[v.variant, v.expected, f"**{v.verdict}**", v.numbers] for v in verdicts]


def section_budgets(ctx: Context) -> list[str]:
    """Verdicts across training budgets: the plot, the per-budget means, one measured sentence per verdict."""
    rows = budgets.budget_table(ctx.tr)
    if not rows:
        return []
    budgets.plot(ctx.tr, ctx.out_dir / "budgets.png")
    n_train = len(ctx.data.splits["train"]) if ctx.data is not None else None
    per_image = {ctx.table.variants[v].train.captions_per_image for v in ctx.tr.order + ctx.tr.sweep_order}
    unit = (f"one epoch = every training image once with {'/'.join(map(str, sorted(per_image)))} caption(s)"
            + (f" ({int(n_train):,} images)" if n_train else ""))
    t = ctx.tr.stage_seconds
    train_s = t.set_index("variant")["train"].groupby(level=0).mean() if not t.empty else pd.Series(dtype=float)
    for r in rows:
        row = r[2].strip("`")
        r.append(f"{train_s[row]:.0f}" if row in train_s else "–")
    lines = ["## Verdicts across training budgets", "",
             f"Each budget is its own set of runs ({unit}; warmup + cosine schedule over that run's own epochs, "
             "every other setting as in the table). At each budget the ablation is compared with the reference "
             "trained for the same epochs: Welch's t over seeds on per-run means, 95% CI. The pattern names the "
             "sequence of per-budget outcomes, budgets ascending (lower / higher = the whole CI below / above 0).", "",
             "![CIDEr and likelihood-swap gap against training budget](budgets.png)", "",
             md_table(["variant", "epochs", "row", "seeds", "CIDEr [95% CI]", "NLL gap [95% CI]", "train s (mean)"],
                      rows), ""]
    verdicts = budgets.verdicts(ctx.tr)
    if not verdicts:
        return lines + [f"No ablation has budget rows that `{ctx.ref}` also has finished, so nothing is compared.", ""]
    k = max(len(v.budgets) for v in verdicts)
    lines += [f"- {v.sentence}" for v in sorted(verdicts, key=lambda v: not v.expected)]
    return lines + ["", f"Each budget is its own 95% test: with {k} budgets and no true difference, the chance that at "
                    f"least one of them comes out decided is about {1 - 0.95 ** k:.0%}, so a verdict decided at some "
                    "budgets only (\"appears only late\", \"fades\", \"at k of n budgets\") is weaker evidence than one "
                    "decided at every budget; \"undecided\" means the seeds cannot tell, not that there is no effect.", ""]


def section_attention(ctx: Context) -> list[str]:
    rows = an.grounding_rows(ctx.tr)
    if not rows:
        return []
    lines = ["## Where the Q-Former looks", "",
             "Grounding on the test images (object pixels known): each query's cross-attention mass on object "
             "pixels (a patch counts by the share of its pixels on an object), averaged over queries, layers and "
             "images, against the objects' share of the image (chance); seed-level 95% CIs. Specialisation: "
             "per-query entropy of the map (nats; uniform = the maximum) and the mean pairwise overlap of the "
             "queries' maps (1 = identical).", "",
             md_table(["variant", "mass on objects", "chance", "mass − chance", "ratio", "entropy (max)", "overlap"],
                      [[r["variant"], fmt_ci(r["mass"]), fmt(r["chance"]), fmt_ci(r["excess"]), fmt(r["ratio"], 2),
                        f"{fmt(r['entropy'], 2)} ({fmt(r['entropy_max'], 2)})", fmt(r["overlap"])] for r in rows]), ""]
    verdicts = an.grounding_verdicts(ctx.tr)
    if verdicts:
        lines += [md_table(["variant", "claim", "verdict", "numbers"], _verdict_rows(verdicts)), ""]
    return lines + _attention_gallery(ctx)


def _attention_gallery(ctx: Context) -> list[str]:
    """Maps of the reference and of frozen-Q-Former variants on the first gallery images (generated data only)."""
    if not ctx.thumbnails or ctx.data is None:
        return []
    from .attention import render_maps
    from .runner import load_run_model

    seed = ctx.table.seeds[0]
    names = [ctx.ref] + an.variants_where(ctx.tr, "model", "train_qformer", False)
    names = [n for n in names if n in ctx.tr.order and ctx.tr.configs[n]["model"]["connector"] == "qformer"
             and seed in ctx.tr.captions[n]]
    lines = []
    for n in names:
        try:
            model, vision = load_run_model(run_path(ctx.tr.runs_dir, ctx.table.name, n, seed), ctx.cache_dir, "cpu",
                                           ctx.data_dir)
        except (UserError, OSError) as err:
            return lines + [f"_(attention maps unavailable: {err})_", ""]
        for image_id in list(ctx.tr.captions[n][seed])[:2]:
            img = ctx.data.load_image(image_id).resize((vision.image_size, vision.image_size))
            maps = model.query_attention(vision.encode_images([img]))
            paths = render_maps(img, maps[:, 0], vision.grid, ctx.out_dir / "attention", f"{n}_{Path(image_id).stem}",
                                per_query=False)
            lines += [f"`{n}`, {image_id} (seed {seed}): ![{n} {image_id}](attention/{paths[-1].name})", ""]
    return lines


def section_reliance(ctx: Context) -> list[str]:
    rows = an.reliance_rows(ctx.tr)
    if not rows:
        return []
    n_layers = max(len(r["layers"]) for r in rows)
    lines = ["## How much the LM reads the visual tokens", "",
             "While it writes its own test captions (teacher-forced on them, the same attention as greedy "
             "generation), the share of the LM's attention mass that lands on the visual prefix, averaged over heads "
             "and generated tokens; the mean over layers with a seed-level 95% CI, then the mean per layer.", "",
             md_table(["variant", "visual share [95% CI, seeds]"] + [f"layer {k}" for k in range(n_layers)],
                      [[r["variant"], fmt_ci(r["share"])] + [fmt(x) for x in r["layers"]] for r in rows]), ""]
    verdicts = an.reliance_verdicts(ctx.tr)
    if verdicts:
        lines += [md_table(["variant", "claim", "verdict", "numbers"], _verdict_rows(verdicts)), ""]
    return lines


def section_diagnosis(ctx: Context) -> list[str]:
    ref_length = _reference_lengths(ctx.table, ctx.data)
    diags = []
    for n in ctx.order:
        d = an.diagnose(ctx.tr, n, ctx.summary.loc[n], an.empty_by_length(ctx.tr, n, ref_length))
        if d:
            diags.append(f"- **{n}**: {d}")
    return ["## Diagnosis of degenerate variants", ""] + (diags or ["No variant is degenerate."]) + [""]


def section_gallery(ctx: Context) -> list[str]:
    table, seed = ctx.table, ctx.table.seeds[0]
    caps = {n: ctx.tr.captions[n][seed] for n in ctx.order if seed in ctx.tr.captions.get(n, {})}
    if not caps:
        return ["## Gallery", "", "_no captions stored_", ""]
    ids = list(next(iter(caps.values())))[:GALLERY_SIZE]
    data, note = None, ""
    if not ctx.thumbnails:
        note = (f"_Images named, not shown: {table.data.name} photos are third-party data and are not copied "
                "into the reports (`ablate report --thumbnails` writes them locally)._\n\n")
    elif ctx.data is None:
        note = "_(thumbnails unavailable: the data set could not be read)_\n\n"
    else:
        data = ctx.data
    rows = []
    for image_id in ids:
        cell = f"`{image_id}`"
        if data is not None and image_id in data.captions:
            img = data.load_image(image_id).resize((96, 96))
            thumb = ctx.out_dir / "gallery" / (Path(image_id).stem + ".png")
            atomic_write(thumb, lambda p: img.save(p, format="PNG"))
            cell = f"![{image_id}](gallery/{thumb.name})"
        rows.append([cell] + [caps[n].get(image_id, "–") or "_(empty)_" for n in caps])
    return ["## Gallery", "", note + f"Seed {seed}, first {len(ids)} images of the {table.data.eval_split} split.", "",
            md_table(["image"] + list(caps), rows), ""]


def section_timing(ctx: Context) -> list[str]:
    t = ctx.tr.stage_seconds
    if t.empty:
        return []
    mean = t.groupby("variant")[STAGES].mean().reindex(ctx.order)
    return ["## Time per stage", "", "Mean seconds per run.", "",
            md_table(["variant"] + STAGES, [[n] + [f"{mean.loc[n, c]:.1f}" for c in STAGES] for n in ctx.order]), ""]


SECTIONS = [section_setup, section_targets, section_provenance, section_failed, section_parameters, section_loss,
            section_main, section_comparisons, section_expectations, section_budgets, section_attention, section_reliance,
            section_diagnosis, section_gallery, section_timing]


def write_report(table: Table, runs_dir: Path, out_root: Path, data_dir: str | None = None,
                 thumbnails: bool | None = None, cache_dir: Path = Path(".cache")) -> Path:
    """``thumbnails=None``: gallery thumbnails only for data the project generates (shapes)."""
    tr = collect(table, Path(runs_dir))
    out_dir = Path(out_root) / table.name
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(table, tr, an.summarize(tr), out_dir, data_dir,
                  table.data.name == "shapes" if thumbnails is None else thumbnails, Path(cache_dir))
    lines = [f"# Ablation report: `{table.name}`", "", table.description, "",
             f"Generated by `ablate report {table.name}` from the runs in `{Path(runs_dir) / table.name}`; "
             "every number below is computed from those stored runs.", ""]
    for section in SECTIONS if tr.order else SECTIONS[:4]:
        lines += section(ctx)
    path = out_dir / "README.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    if len(ctx.summary):
        atomic_write(out_dir / "summary.csv", lambda p: ctx.summary.to_csv(p, float_format="%.6g"))
    return path


# ---- helpers
def _reference_lengths(table: Table, data) -> pd.Series | None:
    """Mean reference length in words per evaluation image, or None when the data cannot be read."""
    if data is None:
        return None
    return pd.Series({i: np.mean([len(c.split()) for c in data.captions[i]]) for i in data.splits[table.data.eval_split]})


def _loss_plot(histories: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for name, hs in histories.items():
        mean = pd.concat(hs).groupby("epoch").mean()
        axes[0].plot(mean.index, mean["train_loss"], marker="o", label=name)
        axes[1].plot(mean.index, mean["dev_loss"], marker="o", label=name)
    for ax, title in zip(axes, ["train loss", "dev loss (nats/token)"]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=90))
    plt.close(fig)


def _lm_note(cfg: dict) -> str:
    info = cfg.get("lm_info", {})
    if "dev_perplexity" not in info:
        return ""
    c = info["config"]
    packing = (f", packed in {c['pack_length']}-token rows with one document per training image"
               if c.get("pack_length") else ", one caption per row")
    if c.get("freeze_embeddings"):
        packing += ", word embeddings kept at their random init (only [pad]/[bos]/[eos] learned)"
    return (f" ({c['n_layer']}×{c['n_embd']}, vocab {info['vocab_size']}, pretrained on {info['train_captions']} "
            f"training captions as text{packing}; dev perplexity {info['dev_perplexity']:.2f})")


def _kv(d: dict) -> str:
    skip = {"debug_nan_at_step", "seed_pad_length", "generate_batch_size"}
    shown = {k: v for k, v in d.items() if k not in skip and not (k == "lora_targets" and not v)}  # [] = LM default
    return ", ".join(f"{k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in shown.items())
