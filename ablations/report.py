"""`ablate report`: reports/<table>/README.md, figures and runs.csv from the table's evidence only
(reports/<table>/runs: run records without weights); no model and no data set on disk is needed.

write_report: evidence.add_runs (local runs join the evidence) -> collect -> analysis.analyse ->
figures -> the sections below, in the order of SECTIONS. This module only turns analysed numbers
into markdown; to show another probe column, add its name to PROBE_COLUMNS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlm_core.atomic import atomic_write, atomic_write_text
from vlm_core.errors import UserError

from . import figures
from .analysis import COMPARED, Analysis, analyse, attention_gallery, run_rows
from .budgets import family_size as budget_family_size
from .collect import collect
from .evidence import add_runs
from .formatting import fmt, fmt_ci, fmt_p, md_table, mean_sd
from .record import STAGES, child, code_label, code_version, evidence_dir
from .scoring import METRICS
from .table_data import load_data
from .tables import Table
from .verdicts import family_size

PROBE_COLUMNS = ["swap_rate", "swap_mutual_bleu4", "nll_gap", "perceptual_score", "empty_rate",
                 "eos_first_rate", "unique_share", "distinct_1", "distinct_2", "mean_length"]
SLOT_COLUMNS = ["slot_colour", "slot_shape", "slot_size", "slot_count", "slot_relation"]
WRITER_LINE = "This report was written by code"  # the one line that names the writing code's version


@dataclass
class ReportInput:
    """What the sections read: the table, its analysed runs, and the pictures already drawn."""

    table: Table
    a: Analysis
    pictures: dict = field(default_factory=dict)  # 'loss', 'budgets', 'thumbnails', 'attention' -> file names

    @property
    def order(self) -> list[str]:
        return self.a.runs.order

    @property
    def ref(self) -> str:
        return self.table.reference


def _mean_sd_cells(r: ReportInput, variant: str, cols: list[str]) -> list[str]:
    return [mean_sd(r.a.summary.loc[variant, c], r.a.summary.loc[variant, f"{c}_std"]) for c in cols]


def _verdict_rows(verdicts) -> list[list[str]]:
    return [[v.variant, v.expected, f"**{v.verdict}**" if v.verdict != "n/a" else "n/a", v.numbers] for v in verdicts]


# ---- sections, in report order (SECTIONS)
def section_setup(r: ReportInput) -> list[str]:
    t, a = r.table, r.a
    cfg = a.runs.configs.get(r.ref) or next(iter(a.runs.configs.values()), {})
    n_images = int(a.runs.runs["images"].iloc[0]) if len(a.runs.runs) else 0
    if t.data.train_images:
        training_data = f"the first {t.data.train_images:,} images of the train split (`data.train_images`)"
    else:
        training_data = "every image of the train split" + (f" ({a.runs.train_images:,})" if a.runs.train_images else "")
    spent = a.time
    wall = (f"{spent['run_seconds'] / 60:.1f} min in runs ({spent['runs']} runs) + {spent['prepare_seconds'] / 60:.1f} "
            f"min shared preparation (features, LM); `run-all` wall clock {spent['wall_seconds'] / 60:.1f} min over "
            f"{len(spent['invocations'])} invocation(s): " + "; ".join(
                f"{x['total_seconds'] / 60:.1f} min for {x['runs']} run(s) (started {x['when']})"
                for x in spent["invocations"])
            if spent["invocations"] else f"{spent['run_seconds'] / 60:.1f} min in runs; `run-all` wall clock not recorded")
    rows = [
        ["data", f"{t.data.name} — scored on the **{t.data.eval_split}** split ({n_images} images, all references)"],
        ["training data", training_data],
        ["vision backbone (frozen)", f"{t.backbones.vision} ({cfg.get('vision_tokens', '?')} tokens × {cfg.get('vision_dim', '?')})"],
        ["language backbone (frozen base)", t.backbones.language + _lm_note(cfg)],
        ["seeds", ", ".join(str(s) for s in t.seeds)],
        ["reference variant", f"`{r.ref}` (every comparison is variant − {r.ref})"],
        [f"model ({r.ref})", _settings_text(cfg.get("model", {}))],
        [f"training ({r.ref})", _settings_text(cfg.get("train", {}))],
        ["wall time", wall],
    ]
    if a.missing:
        rows.append(["not run yet", ", ".join(f"`{v}`" for v in a.missing) + f" (no finished run: `ablate run-all "
                     f"{t.name}` resumes; every section below covers the finished runs only)"])
    lines = ["## Setup", "", md_table(["", ""], rows), ""]
    return lines + (["Notes: " + t.notes.strip(), ""] if t.notes else [])


def section_targets(r: ReportInput) -> list[str]:
    if not r.a.targets:
        return []
    rows = []
    for x in r.a.targets:
        if x["key"] == "minutes":
            verdict = ("**not met** (no `run-all` wall time recorded)" if not x["recorded"] else "met"
                       if x["decision"] == "met" else f"**not met** (over by {x['gap']:.1f} min)")
            rows.append([f"whole table wall time ≤ {x['goal']:g} min", f"{x['got']:.1f} min", verdict])
        elif x["recorded"]:
            words = {"met": "met (the CI lies above the target)",
                     "not met": f"**not met** (the CI lies below; the mean is short by {x['gap']:.3f})",
                     "undecided": "**undecided** (the CI contains the target)"}
            rows.append([f"`{r.ref}` {x['key']} ≥ {x['goal']:g}", fmt_ci(x["interval"]), words[x["decision"]]])
        else:
            rows.append([f"`{r.ref}` {x['key']} ≥ {x['goal']:g}", f"no finished `{r.ref}` run", "**not met**"])
    return ["## Targets", "", f"Set in the table file; numbers from the {r.table.data.eval_split} split: the mean over "
            "seeds with its seed-level 95% CI. A target is met only when the whole CI lies above it.", "",
            md_table(["target", "measured [95% CI, seeds]", "verdict"], rows), ""]


def section_provenance(r: ReportInput) -> list[str]:
    p = r.a.runs.provenance
    if p.empty:
        return []
    keys = ["fingerprint", "code", "libraries", "device", "cpu", "threads"]
    rows = [[f"`{fp}`", f"`{code}`", libs, device, cpu, threads, len(g), ", ".join(dict.fromkeys(g["variant"]))]
            for (fp, code, libs, device, cpu, threads), g in p.groupby(keys, sort=False)]
    lines = ["## Provenance", "", "What made the runs behind this report (from each run's config.json): the "
             "fingerprint of the code a result depends on (syntax trees of the model, data, training and run "
             "stages; comments, docs, tests and the report writer left out), the commit, and what changes the "
             f"numerics. The runs were made on {p.groupby(['host', 'cpu']).ngroups} machine(s), by "
             f"{p['fingerprint'].nunique()} code version(s) (fingerprints) from {p['code'].nunique()} commit(s).", "",
             f"{WRITER_LINE} `{code_label(code_version())}`.", "",
             md_table(["fingerprint", "commit", "libraries", "device", "CPU (ISA)", "torch threads", "runs",
                       "variants"], rows), ""]
    if p["fingerprint"].nunique() > 1:
        lines += [f"**Warning: the runs come from {p['fingerprint'].nunique()} code versions**; differences between "
                  "variants may partly be differences between code versions.", ""]
    stale = p[~p["current"]]
    if len(stale):
        lines += [f"**Warning: {len(stale)} stale run(s)**, made with settings that differ from the table's now: "
                  + ", ".join(f"{x.variant} seed {x.seed}" for x in stale.itertuples())
                  + " (`ablate run-all` redoes them unless told `--keep-stale`).", ""]
    else:
        lines += ["Every run's stored config hash matches the table's current settings.", ""]
    return lines


def section_failed(r: ReportInput) -> list[str]:
    failed = r.a.runs.failed
    if not failed:
        return []
    return ["## Failed runs", "", md_table(["variant", "seed", "reason"],
                                          [[f["variant"], f["seed"], f["reason"]] for f in failed]), ""]


def section_parameters(r: ReportInput) -> list[str]:
    modules = sorted({m for x in r.a.parameters for m in x["modules"]})
    rows = [[x["variant"]] + [f"{x['modules'][m]['trainable']:,} / {x['modules'][m]['frozen']:,}" if m in x["modules"]
                              else "–" for m in modules] + [f"{x['trainable']:,} ({x['share']:.1%})"]
            for x in r.a.parameters]
    return ["## Trainable parameters", "", "Per module, seed-independent (trainable / frozen).", "",
            md_table(["variant"] + modules + ["trainable total"], rows), ""]


def section_loss(r: ReportInput) -> list[str]:
    rows = [[x["variant"], " → ".join(fmt(v) for v in x["train"]), " → ".join(fmt(v) for v in x["dev"]),
             "yes" if x["train_falls"] else "no", "yes" if x["dev_falls"] else "no"] for x in r.a.loss]
    lines = ["## Loss per epoch", "", f"Mean over seeds (nats/token). ![loss]({r.pictures['loss']})", "",
             md_table(["variant", "train loss", "dev loss", "train falls every epoch", "dev falls every epoch"], rows), ""]
    if r.a.self_critical:
        candidates = sorted({f"the {x['samples']} beams of a beam search of each training image" if x["candidates"] == "beam"
                             else f"the {x['samples']} captions sampled from each training image" for x in r.a.self_critical})
        lines += ["Self-critical epochs after the cross-entropy ones (mean over seeds): the reward is the mean "
                  f"CIDEr-D of {' / '.join(candidates)}, against its training references; the "
                  "dev loss is the same reference NLL as above.", "",
                  md_table(["variant", "mean candidate CIDEr-D", "dev loss"],
                           [[x["variant"], " → ".join(f"{v:.3f}" for v in x["reward"]),
                             " → ".join(fmt(v) for v in x["dev"])] for x in r.a.self_critical]), ""]
    return lines


def section_main(r: ReportInput) -> list[str]:
    s = r.a.summary
    metric_cols = METRICS + (["SPICE"] if "SPICE" in s.columns else [])
    probe_cols = [c for c in PROBE_COLUMNS if c in s.columns]
    nll_refs = r.table.probes.nll_refs
    lines = ["## Main table", "", f"Mean ± std over seeds, {r.table.data.eval_split} split. Metrics: pycocoevalcap "
             "(PTB tokenizer; CIDEr is CIDEr-D).", "",
             md_table(["variant", "seeds"] + metric_cols, [[n, int(s.loc[n, "seeds"])] + _mean_sd_cells(r, n, metric_cols)
                                                            for n in r.order]), "",
             "Probes: generation swap (share of image pairs whose captions differ; mutual BLEU-4 of the pair), "
             "likelihood swap (NLL/token of the references given a swapped image minus given their own"
             + (f"; the first {nll_refs} reference(s) of each image" if nll_refs else "")
             + "), perceptual score (relative CIDEr drop under permuted images) and degeneracy.", "",
             md_table(["variant"] + probe_cols, [[n] + _mean_sd_cells(r, n, probe_cols) for n in r.order]), ""]
    slot_cols = [c for c in SLOT_COLUMNS if c in s.columns]
    if slot_cols:
        lines += ["Slot accuracy (parsed from the caption against the structured labels; relation on two-object "
                  "images).", "", md_table(["variant"] + slot_cols, [[n] + _mean_sd_cells(r, n, slot_cols) for n in r.order]), ""]
    return lines


def section_likelihood(r: ReportInput) -> list[str]:
    rows = [[x["variant"], fmt_ci(x["seed"]), f"{x['positive']:.1%}", fmt_p(x["p_images"]), x["images"],
             f"“{x['mode'] or '(empty)'}” ({x['mode_share']:.1%} of {x['captions']})"] for x in r.a.likelihood]
    if not rows:
        return []
    return ["Likelihood swap: the mean NLL gap over seeds with its seed-level 95% CI; then, for these trained "
            "models, the share of images whose gap (averaged over seeds) is positive and a Wilcoxon signed-rank "
            "test over images. The most frequent caption is counted over every caption of every seed.", "",
            md_table(["variant", "NLL gap [95% CI, seeds]", "images with gap > 0", "Wilcoxon p (images)", "images",
                      "most frequent caption"], rows), ""]


def section_comparisons(r: ReportInput) -> list[str]:
    lines = [f"## Comparisons with `{r.ref}`", "",
             "**Seed level** (what verdicts use): each run reduced to its mean over images, variant − reference "
             "compared with Welch's t over seeds (95% CI, p; a side's seed SD is never taken below the standard "
             "error its runs' means have from their images). Each table below is one family: it decides on "
             "Holm-adjusted p. **Image level** (these trained models only): per-image values averaged over seeds, "
             "bootstrap 95% CI over images and Wilcoxon p; it says whether these particular models differ, not "
             "whether the architectures do. Planning numbers are estimates from 2-4 degrees of freedom.", ""]
    notes = []
    for metric, rows in r.a.comparisons.items():
        cells = []
        for x in rows:
            c, i = x["comparison"], x["comparison"].image
            t = x["test"]
            decision = ("differ" if x["decided"] else "**inconclusive**" if t.decision == "inconclusive"
                        else f"**{t.decision}**")
            seeds = f"{c.seeds_range[0]}–{c.seeds_range[1]}" if c.seeds_range and not x["decided"] else "–"
            cells.append([x["variant"], fmt_ci(c.seed_level), fmt_p(c.seed_level.p), fmt_p(t.p_adjusted),
                          f"{c.seed_level.n}", fmt(c.sd_variant), fmt(c.sd_reference), decision, fmt(c.detectable), seeds,
                          f"{fmt(i['mean_diff'])} [{fmt(i['ci_low'])}, {fmt(i['ci_high'])}]", fmt_p(i["p_wilcoxon"])])
            if x["image_only"]:
                notes.append(f"- {COMPARED[metric]}, `{x['variant']}`: these trained models differ (image-level CI "
                             f"{fmt(i['ci_low'])} to {fmt(i['ci_high'])}), but that is **not a seed-level difference**"
                             f"{x['undecided_note']}.")
        lines += [f"### Δ{COMPARED[metric]}", "",
                  md_table(["variant", "Δ [95% CI, seeds]", "Welch p", "Holm p", "seeds", "SD variant", f"SD {r.ref}",
                            "seeds decide", "|Δ| detectable now (80% power)", "seeds for 80% power (range)",
                            "Δ [95% CI, images]", "Wilcoxon p (images)"], cells), ""]
    return lines + (notes + [""] if notes else [])


def section_expectations(r: ReportInput) -> list[str]:
    rows = [[v.variant, v.expected, v.expectation, f"**{v.verdict}**" if v.verdict != "n/a" else "n/a", v.numbers]
            for v in r.a.expectations]
    lines = ["## Expected vs observed", "", "Each expectation is tested by its rule at seed level (95% CIs over "
             f"training runs). The table's {family_size(r.a.expectations)} tests are one family: each decides on its "
             "Holm-adjusted p (the chance that any of them is decided by chance stays at 5 %). **inconclusive** "
             "means the seeds cannot decide it; **seeds disagree** that some runs of the variant collapsed and some "
             "did not (a mean over them describes no run), **confounded** that the runs compared come from different "
             "code versions. Every verdict here assumes roughly normal seed-to-seed variation; under strong skew "
             "the error rate is higher (see the README, \"How the reports decide\").", "",
             md_table(["variant", "expected", "rule", "verdict", "numbers"], rows), ""]
    checks = r.a.plan_checks
    if checks:
        lines += ["### The original plan's checks", "",
                  f"- Loss falls every epoch ({r.ref}, train and dev, mean over seeds): "
                  f"**{'yes' if checks['falls'] else 'no'}**.",
                  f"- Changing the image changes the caption ({r.ref}): **{checks['swap']}** — {checks['swap_text']}.", ""]
    return lines


def section_budgets(r: ReportInput) -> list[str]:
    """Verdicts across training budgets: the plot, the per-budget means, one measured sentence per verdict."""
    if not r.a.budget_rows:
        return []
    runs = r.a.runs
    per_image = {r.table.variants[v].train.captions_per_image for v in runs.order + runs.sweep_order}
    unit = (f"one epoch = every training image once with {'/'.join(map(str, sorted(per_image)))} caption(s)"
            + (f" ({runs.train_images:,} images)" if runs.train_images else ""))
    rows = [[f"`{x['variant']}`", str(x["epochs"]), f"`{x['row']}`", str(x["seeds"]), fmt_ci(x["CIDEr"]),
             fmt_ci(x["nll_gap"]), f"{x['train_seconds']:.0f}" if x["train_seconds"] is not None else "–"]
            for x in r.a.budget_rows]
    lines = ["## Verdicts across training budgets", "",
             f"Each budget is its own set of runs ({unit}; warmup + cosine schedule over that run's own epochs, "
             "every other setting as in the table). At each budget the ablation is compared with the reference "
             "trained for the same epochs: Welch's t over seeds on per-run means, 95% CI. The pattern names the "
             "sequence of per-budget outcomes, budgets ascending (lower / higher: decided below / above 0 on the "
             "Holm-adjusted p of the section's family).", "",
             f"![CIDEr and likelihood-swap gap against training budget]({r.pictures['budgets']})", "",
             md_table(["variant", "epochs", "row", "seeds", "CIDEr [95% CI]", "NLL gap [95% CI]", "train s (mean)"],
                      rows), ""]
    verdicts = r.a.budget_verdicts
    if not verdicts:
        return lines + [f"No ablation has budget rows that `{r.ref}` also has finished, so nothing is compared.", ""]
    lines += [f"- {_budget_sentence(v)}" for v in sorted(verdicts, key=lambda v: not v.expected)]
    return lines + ["", f"The section's {budget_family_size(verdicts)} tests (every ablation, quantity and budget) are "
                    "one family: each direction above is decided on its Holm-adjusted p, so the chance that any "
                    "cell of this section is decided by chance stays at 5 %, and a pattern (\"flips\", \"appears only "
                    "late\") rests on adjusted decisions only. \"undecided\" means the seeds cannot tell, not that "
                    "there is no effect.", ""]


def section_attention(r: ReportInput) -> list[str]:
    rows = r.a.grounding
    if not rows:
        return []
    lines = ["## Where the Q-Former looks", "",
             "Grounding on the test images (object pixels known): each query's cross-attention mass on object "
             "pixels (a patch counts by the share of its pixels on an object), averaged over queries, layers and "
             "images, against the objects' share of the image (chance); seed-level 95% CIs. Specialisation: "
             "per-query entropy of the map (nats; uniform = the maximum) and the mean pairwise overlap of the "
             "queries' maps (1 = identical).", "",
             md_table(["variant", "mass on objects", "chance", "mass − chance", "ratio", "entropy (max)", "overlap"],
                      [[x["variant"], fmt_ci(x["mass"]), fmt(x["chance"]), fmt_ci(x["excess"]), fmt(x["ratio"], 2),
                        f"{fmt(x['entropy'], 2)} ({fmt(x['entropy_max'], 2)})", fmt(x["overlap"])] for x in rows]), ""]
    if r.a.grounding_verdicts:
        lines += [md_table(["variant", "claim", "verdict", "numbers"], _verdict_rows(r.a.grounding_verdicts)), ""]
    seed = r.a.gallery["seed"]
    for variant, files in r.pictures.get("attention", {}).items():
        lines += [f"`{variant}`, {image_id} (seed {seed}): ![{variant} {image_id}](attention/{name})"
                  for image_id, name in files.items()] + [""]
    return lines


def section_reliance(r: ReportInput) -> list[str]:
    rows = r.a.reliance
    if not rows:
        return []
    n_layers = max(len(x["layers"]) for x in rows)
    lines = ["## How much the LM reads the visual tokens", "",
             "While it writes its own test captions (teacher-forced on them, the same attention as greedy "
             "generation), the share of the LM's attention mass that lands on the visual prefix, averaged over heads "
             "and generated tokens; the mean over layers with a seed-level 95% CI, then the mean per layer.", "",
             md_table(["variant", "visual share [95% CI, seeds]"] + [f"layer {k}" for k in range(n_layers)],
                      [[x["variant"], fmt_ci(x["share"])] + [fmt(v) for v in x["layers"]] for x in rows]), ""]
    if r.a.reliance_verdicts:
        lines += [md_table(["variant", "claim", "verdict", "numbers"], _verdict_rows(r.a.reliance_verdicts)), ""]
    return lines


def section_diagnosis(r: ReportInput) -> list[str]:
    diags = [f"- **{v}**: {text}" for v, text in r.a.diagnoses.items()]
    return ["## Diagnosis of degenerate variants", ""] + (diags or ["No variant is degenerate."]) + [""]


def section_gallery(r: ReportInput) -> list[str]:
    g, thumbs = r.a.gallery, r.pictures.get("thumbnails")
    if not g["captions"]:
        return ["## Gallery", "", "_no captions stored_", ""]
    note = ""
    if thumbs is None:
        note = (f"_Images named, not shown: {r.table.data.name} photos are third-party data and are not copied "
                "into the reports (`ablate report --thumbnails` writes them locally)._\n\n")
    elif not thumbs:
        note = "_(thumbnails unavailable: the data set could not be read)_\n\n"
    rows = [[f"![{i}](gallery/{thumbs[i]})" if thumbs and i in thumbs else f"`{i}`"]
            + [caps.get(i, "–") or "_(empty)_" for caps in g["captions"].values()] for i in g["ids"]]
    return ["## Gallery", "", note + f"Seed {g['seed']}, first {len(g['ids'])} images of the "
            f"{r.table.data.eval_split} split.", "", md_table(["image"] + list(g["captions"]), rows), ""]


def section_timing(r: ReportInput) -> list[str]:
    m = r.a.stage_means
    if m.empty:
        return []
    return ["## Time per stage", "", "Mean seconds per run.", "",
            md_table(["variant"] + list(STAGES), [[n] + [f"{m.loc[n, c]:.1f}" for c in STAGES] for n in r.order]), ""]


def section_evidence(r: ReportInput) -> list[str]:
    """Where the numbers come from, how big that is, how to recompute a verdict, and what was re-run."""
    sizes, other = r.a.evidence_sizes, next((v for v in r.order if v != r.ref), None)
    lines = ["## Evidence", "",
             "Every run above is committed beside this report as its run record without weights "
             "(`runs/<variant>/seed-<k>/`: settings with hash and provenance, parameters, loss history, metrics, "
             f"per-image values, captions; the large files gzipped): {len(sizes)} runs, {sizes.sum() / 1024:,.0f} KiB "
             f"in all, {sizes.median() / 1024:,.0f} KiB per run (median; largest {sizes.max() / 1024:,.0f} KiB). "
             "`runs.csv` has one row per run (every metric and probe, the per-image means the seed-level tests "
             "use, the code fingerprint).", ""]
    if other:
        lines += ["Any seed-level verdict can be recomputed from it, e.g.:", "", "```python",
                  "import pandas as pd, scipy.stats as st", 'runs = pd.read_csv("runs.csv")',
                  f'a, b = (runs[runs.variant == v]["CIDEr (mean over images)"] for v in ("{other}", "{r.ref}"))',
                  "t = st.ttest_ind(a, b, equal_var=False)  # Welch, as the report",
                  "print(a.mean() - b.mean(), t.confidence_interval(0.95), t.pvalue)", "```", ""]
    if not r.a.verification:
        return lines + ["No cell has been re-verified yet (`ablate verify` retrains chosen cells and compares).", ""]
    rows = [[f"{c['variant']} seed {c['seed']}", c["when"], f"`{c['code']}`", "**exact**" if c["exact"] else "differs",
             "–" if c["exact"] else f"{c['largest']['quantity']}: {fmt(c['largest']['difference'], 4)}",
             "–" if c["exact"] else fmt(c["largest"]["seed_sds"], 2), ", ".join(c["differed"]) or "nothing recorded"]
            for c in r.a.verification]
    return lines + ["Re-verified by `ablate verify` (the cell retrained and rescored by the code named, compared "
                    "with the evidence):", "",
                    md_table(["cell", "when", "code", "result", "largest difference", "in seed SDs", "what differed"],
                             rows), ""]


SECTIONS = [section_setup, section_targets, section_provenance, section_failed, section_parameters, section_loss,
            section_main, section_likelihood, section_comparisons, section_expectations, section_budgets,
            section_attention, section_reliance, section_diagnosis, section_gallery, section_timing, section_evidence]
SECTIONS_WITHOUT_RUNS = [section_setup, section_targets, section_provenance, section_failed]  # only failed runs


def write_report(table: Table, runs_dir: Path | None, out_root: Path, data_dir: str | None = None,
                 thumbnails: bool | None = None, log=print) -> Path:
    """Add the finished runs in ``runs_dir`` (if any) to the table's evidence, then write the report from the
    evidence alone. ``thumbnails=None``: pictures of images only for data the project generates (shapes)."""
    evidence = evidence_dir(out_root, table.name)
    local = child(runs_dir, table.name) if runs_dir is not None else None
    if local is not None and local.is_dir():
        merge = add_runs(table, local, evidence)
        if merge.added or merge.kept:
            log(f"evidence: added {len(merge.added)} run(s) from {local} to {evidence}"
                + "".join(f"\n  {line}" for line in merge.kept))
    a = analyse(collect(table, evidence))
    out_dir = child(out_root, table.name)
    r = ReportInput(table, a, draw_figures(table, a, out_dir, data_dir, thumbnails))
    lines = [f"# Ablation report: `{table.name}`", "", table.description, "",
             f"Generated by `ablate report {table.name}` from the run records committed beside it (`runs/`, see "
             "\"Evidence\"); every number below is computed from them.", ""]
    for section in SECTIONS if a.runs.order else SECTIONS_WITHOUT_RUNS:
        lines += section(r)
    path = out_dir / "README.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    if len(a.summary):
        atomic_write(out_dir / "summary.csv", lambda p: a.summary.to_csv(p, float_format="%.6g"))
    if len(a.runs.runs):
        atomic_write(out_dir / "runs.csv", lambda p: run_rows(a.runs).to_csv(p, index=False, float_format="%.8g"))
    return path


def draw_figures(table: Table, a: Analysis, out_dir: Path, data_dir: str | None, thumbnails: bool | None) -> dict:
    """Every picture the sections show; images (thumbnails, attention) only where the data may be shown."""
    pictures = {}
    if a.loss:
        pictures["loss"] = figures.loss_plot({n: a.runs.histories[n] for n in a.runs.order}, out_dir / "loss.png")
    if a.budget_rows:
        pictures["budgets"] = figures.budget_plot(a.runs, out_dir / "budgets.png")
    if table.data.name == "shapes" if thumbnails is None else thumbnails:
        data = _readable_data(table, data_dir)
        pictures["thumbnails"] = figures.thumbnails(a.gallery["ids"], data.load_image, out_dir / "gallery") if data else {}
        if data:
            pictures["attention"] = {v: figures.attention_pictures(maps, data.load_image, out_dir / "attention", v)
                                     for v, maps in attention_gallery(a.runs).items()}
    return pictures


def _readable_data(table: Table, data_dir: str | None):
    try:
        return load_data(table.data, data_dir)
    except (UserError, OSError):
        return None


def _budget_sentence(v) -> str:
    """One sentence per budget verdict, every number from the runs."""
    label = COMPARED.get(v.quantity, v.quantity)
    claim = (f"`{v.variant}` vs `{v.reference}` on {label}, expected lower" if v.expected
             else f"`{v.variant}` vs `{v.reference}` on {label} (no expectation; shown for completeness)")
    steps = "; ".join(f"{b} epoch{'s' if b != 1 else ''}: {d} {fmt_ci(i)}, {i.n} seeds"
                      for b, d, i in zip(v.budgets, v.directions, v.differences))
    gone = f"; not compared at {', '.join(map(str, v.missing))} epochs (no {label} on one side)" if v.missing else ""
    return f"{claim}: **{v.pattern}** (Δ{label}, seed-level 95% CI, direction by Holm-adjusted p — {steps}{gone})."


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


def _settings_text(d: dict) -> str:
    skip = {"debug_nan_at_step", "seed_pad_length", "generate_batch_size"}
    shown = {k: v for k, v in d.items() if k not in skip and not (k == "lora_targets" and not v)}  # [] = LM default
    return ", ".join(f"{k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in shown.items())
