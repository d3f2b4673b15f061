"""The report's sections on results: parameters, losses, the main table, comparisons, expectations, budgets,
inside the model, diagnoses, gallery, time. Each turns analysed numbers (ReportInput) into markdown lines."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ablations.decide.budgets import family_size as budget_family_size
from ablations.report.formatting import fmt, fmt_ci, fmt_p, fmt_up, md_table, mean_sd
from ablations.run.record import STAGES
from ablations.measure.scoring import METRIC_COLUMNS, METRICS
from ablations.decide.power import comparison_detectable, comparison_plan
from ablations.decide.verdicts import COMPARED, family_size, plan_cells

if TYPE_CHECKING:
    from ablations.report.write import ReportInput

PROBE_COLUMNS = ["swap_rate", "swap_mutual_bleu4", "nll_gap", "perceptual_score", "empty_rate",
                 "eos_first_rate", "unique_share", "distinct_1", "distinct_2", "mean_length"]
SLOT_COLUMNS = ["slot_colour", "slot_shape", "slot_size", "slot_count", "slot_relation"]


def _mean_sd_cells(r: ReportInput, variant: str, cols: list[str]) -> list[str]:
    return [mean_sd(r.a.summary.loc[variant, c], r.a.summary.loc[variant, f"{c}_std"]) for c in cols]


def _verdict_rows(verdicts) -> list[list[str]]:
    return [[v.variant, v.expected, f"**{v.verdict}**" if v.verdict != "n/a" else "n/a", v.numbers] for v in verdicts]


def section_parameters(r: ReportInput) -> list[str]:
    modules = sorted({m for x in r.a.parameters for m in x["modules"]})
    rows = [[x["variant"]] + [f"{x['modules'][m]['trainable']:,} / {x['modules'][m]['frozen']:,}" if m in x["modules"]
                              else "–" for m in modules] + [f"{x['trainable']:,} ({x['share']:.1%})"]
            for x in r.a.parameters]
    return ["## Trainable parameters", "", "Per module, seed-independent (trainable / frozen).", "",
            md_table(["variant"] + modules + ["trainable total"], rows), ""]


def _check_points(r: ReportInput) -> list[float]:
    """The history points at fractions of an epoch (train.dev_checks), over all variants; [] without checks."""
    points = sorted({e for x in r.a.loss for e in x["epochs"]})
    return points if any(e != int(e) for e in points) else []


def every_point(r: ReportInput) -> str:
    return "at every check" if _check_points(r) else "every epoch"


def section_loss(r: ReportInput) -> list[str]:
    points = _check_points(r)
    checks, every = bool(points), every_point(r)
    rows = [[x["variant"], " → ".join(fmt(v) for v in x["train"]), " → ".join(fmt(v) for v in x["dev"]),
             "yes" if x["train_falls"] else "no", "yes" if x["dev_falls"] else "no",
             "–" if x["dev_last_change"] is None else f"{x['dev_last_change']:+.4f}"] for x in r.a.loss]
    lines = ["## Loss per epoch", "", f"![loss per epoch, one panel per variant]({r.pictures['loss']})", "",
             "*Mean over seeds (nats/token), one panel per variant, all on one y scale but a panel whose title "
             "names its own (the seed recipe's loss also counts its padding): look for both lines falling, for the "
             "gap between them (overfitting when dev rises while train falls) and, across panels, for the dev "
             "loss each variant reaches (e.g. `blind` against `full`)"
             + ("; after the dashed line the self-critical epochs, with the mean candidate CIDEr-D on the right axis "
                "(one scale for every panel)" if r.a.self_critical else "") + ".*", "",
             *([f"Dev loss is also measured inside each epoch ({', '.join(f'{e:g}' for e in points)} "
                "epochs): train loss is then the mean since the check before.", ""] if checks else []),
             md_table(["variant", "train loss", "dev loss", f"train falls {every}", f"dev falls {every}",
                       "dev loss, last change (still falling if < 0)"], rows), ""]
    if r.a.self_critical:
        candidates = sorted({f"the {x['samples']} beams of a beam search of each training image" if x["candidates"] == "beam"
                             else f"the {x['samples']} captions sampled from each training image" for x in r.a.self_critical})
        lines += ["Self-critical epochs after the cross-entropy ones (mean over seeds): the reward is the mean "
                  f"CIDEr-D of {' / '.join(candidates)}, against its training references; the "
                  "dev loss is the same reference NLL as above.", "",
                  md_table(["variant", "mean candidate CIDEr-D", "dev loss"],
                           [[x["variant"], " → ".join(f"{v:.3f}" for v in x["reward"]),
                             " → ".join(fmt(v) for v in x["dev"])] for x in r.a.self_critical]), ""]
    if r.a.self_critical_gain:
        lines += ["Each run's model before its self-critical epochs (kept as `weights-xe/`) is captioned and scored "
                  f"on the {r.table.data.eval_split} split the same way as its final model: cross-entropy → final, and the "
                  "mean gain over seeds with its 95% CI (final − cross-entropy, run by run).", "",
                  md_table(["variant", "seed", "BLEU-4", "CIDEr"],
                           [[x["variant"], str(run["seed"]), *[f"{run[m][0]:.3f} → {run[m][1]:.3f}" for m in ("BLEU-4", "CIDEr")]]
                            for x in r.a.self_critical_gain for run in x["runs"]]
                           + [[x["variant"], "gain", *[fmt_ci(x["gain"][m]) for m in ("BLEU-4", "CIDEr")]]
                              for x in r.a.self_critical_gain]), ""]
    return lines


def section_main(r: ReportInput) -> list[str]:
    s = r.a.summary
    metric_cols = METRICS + [c for c in METRIC_COLUMNS if c not in METRICS and c in s.columns]  # opt-in: when run
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
             "whether the architectures do. Planning numbers come from the rule's simulated power (this test alone, before "
             "Holm; normal seeds at the seed SDs the test uses, which are themselves estimates from few seeds): the "
             "smallest |Δ| these seeds decide 80% of the time, and, where undecided, the seeds a side that would "
             "decide Δ at its estimate and at the ends of its 95% CI (\"> 200\": more than the search goes to; "
             "\"∞\": the CI reaches 0, where no number of seeds decides).", ""]
    if "comparisons" in r.pictures:
        from ablations.report.figures import run_values, seed_pair_shares

        shares = seed_pair_shares(run_values(r.a.runs, r.a.comparisons))
        lines += [f"![every comparison with {r.ref}]({r.pictures['comparisons']})", "",
                  f"*Left, each variant − `{r.ref}`, seed-level 95% CI, one row of panels per quantity: red / blue = "
                  "decided below / above 0 within its family (Holm), grey = inconclusive, hollow orange = not decided "
                  "(seeds disagree in kind, or runs from different code). A CI that crosses 0 and is grey says the "
                  f"seeds cannot tell. Beside it Δ and P: the share of (variant seed, `{r.ref}` seed) pairs in which "
                  f"the variant's value is above `{r.ref}`'s, ties half. Right, every run: one dot per seed (its "
                  "number beside it; a cross = a run that collapsed), the bar the variant's mean, the dotted line "
                  f"`{r.ref}`'s mean.*", "",
                  f"P(variant above `{r.ref}`) over seed pairs: " + "; ".join(
                      f"Δ{COMPARED.get(m, m)} " + ", ".join(f"`{v}` {p:.2f}" for v, p in ps.items())
                      for m, ps in shares.items()) + ".", ""]
    notes = []
    for metric, rows in r.a.comparisons.items():
        cells = []
        for x in rows:
            c, i = x["comparison"], x["comparison"].image
            t = x["test"]
            decision = ("differ" if x["decided"] else "**inconclusive**" if t.decision == "inconclusive"
                        else f"**{t.decision}**")
            detectable, seeds = plan_cells(comparison_plan(c) if not x["decided"] else None)
            if x["decided"]:
                detectable = fmt_up(comparison_detectable(c))
            cells.append([x["variant"], fmt_ci(c.seed_level), fmt_p(c.seed_level.p), fmt_p(t.p_adjusted),
                          f"{c.seed_level.n}", fmt(c.sd_variant), fmt(c.sd_reference), decision, detectable, seeds,
                          f"{fmt(i['mean_diff'])} [{fmt(i['ci_low'])}, {fmt(i['ci_high'])}]", fmt_p(i["p_wilcoxon"])])
            if x["image_only"]:
                notes.append(f"- {COMPARED[metric]}, `{x['variant']}`: these trained models differ (image-level CI "
                             f"{fmt(i['ci_low'])} to {fmt(i['ci_high'])}), but that is **not a seed-level difference**"
                             f"{t.planning_text()}.")
        lines += [f"### Δ{COMPARED[metric]}", "",
                  md_table(["variant", "Δ [95% CI, seeds]", "Welch p", "Holm p", "seeds", "SD variant", f"SD {r.ref}",
                            "seeds decide", "|Δ| detectable now (80% power)", "seeds a side for 80% power: at Δ [CI's far end, near end]",
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
             "the error rate is higher (docs/how-reports-decide.md in the repository).", "",
             md_table(["variant", "expected", "rule", "verdict", "numbers"], rows), ""]
    for v in [v for v in r.a.expectations if v.rule is not None and v.rule.equivalence]:
        m = f"±{v.rule.equivalence.margin:g}"
        lines += [f"`{v.variant}`, {v.expectation}: **equivalent** when the seed-level 90% CI of the difference lies "
                  f"inside {m} (two one-sided Welch tests at 5 % each, TOST), **differs** when the 95% CI excludes 0, "
                  "**inconclusive** otherwise; both p are Holm-adjusted with the family, in which the two count once "
                  "(no difference and a difference of at least the margin cannot both be true). Why "
                  f"{m}: {v.rule.margin_reason}", ""]
    checks = r.a.plan_checks
    if checks:
        lines += ["### The original plan's checks", "",
                  f"- Loss falls {every_point(r)} ({r.ref}, train and dev, mean over seeds): "
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
             "*Each variant's mean over seeds at each training budget, with its seed-level 95% CI (points dodged "
             "sideways so that the bars do not hide each other): look for whether an ablation's gap to "
             f"`{r.ref}` keeps its sign as training grows; the table below tests it at each budget.*", "",
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
    lines = ["## Gallery", "", note + f"Seed {g['seed']}, {len(g['ids'])} images of the {r.table.data.eval_split} "
             f"split, chosen by a fixed rule: {g['rule']}.", ""]
    for i in g["ids"]:
        picture = f"![{i}](gallery/{thumbs[i]}) " if thumbs and i in thumbs else ""
        refs = g["references"].get(i)
        lines += [f"### {picture}`{i}`", "", f"*{g['why'][i]}*", ""]
        lines += (["References: " + " · ".join(f"“{c}”" for c in refs), ""] if refs else
                  ["_(reference captions not stored with this evidence)_", ""])
        lines += [md_table(["variant", "caption"], [[v, caps.get(i, "–") or "_(empty)_"] for v, caps in g["captions"].items()]), ""]
    return lines


def section_timing(r: ReportInput) -> list[str]:
    m = r.a.stage_means
    if m.empty:
        return []
    rows = [[n, str(int(m.loc[n, "runs"]))] + [f"{m.loc[n, c]:.1f}" for c in STAGES]
            + [f"{m.loc[n, 'whole_mean'] / 60:.1f}", f"{m.loc[n, 'whole_min'] / 60:.1f} – {m.loc[n, 'whole_max'] / 60:.1f}"]
            for n in m.index]  # the control variants, then any budget rows
    return ["## Time per stage", "",
            "Mean seconds per run in each stage, then a whole run (its stages summed) in minutes: the mean and the "
            "fastest – slowest run (runs that shared the cores are slower; the invocations are listed under Setup).", "",
            md_table(["variant", "runs"] + list(STAGES) + ["whole run (min)", "fastest – slowest (min)"], rows), ""]


def _budget_sentence(v) -> str:
    """One sentence per budget verdict, every number from the runs."""
    label = COMPARED.get(v.quantity, v.quantity)
    claim = (f"`{v.variant}` vs `{v.reference}` on {label}, expected lower" if v.expected
             else f"`{v.variant}` vs `{v.reference}` on {label} (no expectation; shown for completeness)")
    steps = "; ".join(f"{b} epoch{'s' if b != 1 else ''}: {d} {fmt_ci(i)}, {i.n} seeds"
                      for b, d, i in zip(v.budgets, v.directions, v.differences))
    gone = f"; not compared at {', '.join(map(str, v.missing))} epochs (no {label} on one side)" if v.missing else ""
    machines = "".join(f" At {b} epoch{'s' if b != 1 else ''}: {c}." for b, c in v.machines.items())
    return (f"{claim}: **{v.pattern}** (Δ{label}, seed-level 95% CI, direction by Holm-adjusted p — {steps}{gone})."
            + machines)
