"""`ablate report`: reports/<table>/README.md, figures and runs.csv from the table's evidence only
(reports/<table>/runs: run records without weights); no model and no data set on disk is needed.

write_report: evidence.add_runs (local runs join the evidence) -> collect -> analysis.analyse ->
figures -> the sections below, in the order of SECTIONS. The sections on results live in
report_sections.py (to show another probe column, add its name to PROBE_COLUMNS there). Beside the
README, verdicts.csv / verdicts.json hold every verdict with its numbers, from the same Verdict objects
the sections print (verdict_records).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vlm_core.atomic import atomic_write, atomic_write_text
from vlm_core.errors import UserError

from ablations.report import figures, until_decided
from ablations.report.analysis import Analysis, analyse, attention_gallery, run_rows
from ablations.decide.budgets import QUANTITIES as BUDGET_QUANTITIES
from ablations.report.collect import collect
from ablations.report.evidence import add_runs
from ablations.report.summary import report_answer
from ablations.report.formatting import fmt, fmt_ci, md_table
from ablations.run.deferred_scoring import score_table
from ablations.run.provenance import REPO_ROOT, code_label, code_version
from ablations.run.record import child, evidence_dir
from ablations.run.table_files import ReferenceFile
from ablations.table_data import load_data
from ablations.report.sections import (section_attention, section_budgets, section_comparisons, section_diagnosis,
                              section_expectations, section_gallery, section_likelihood, section_loss, section_main,
                              section_parameters, section_reliance, section_timing, _budget_sentence)
from ablations.tables import Table
from ablations.decide.verdicts import COMPARED

WRITER_LINE = "This report was written by code"  # the one line that names the writing code's version


@dataclass
class ReportInput:
    """What the sections read: the table, its analysed runs, and the pictures already drawn."""

    table: Table
    a: Analysis
    pictures: dict = field(default_factory=dict)  # 'loss', 'budgets', 'thumbnails', 'attention' -> file names
    replications: list = field(default_factory=list)  # markdown lines: each replication's verdicts beside these
    sequential: list = field(default_factory=list)  # markdown lines: the looks of `run-all --until-decided`, if any
    looks: object = None  # its sequential.LookResult

    @property
    def order(self) -> list[str]:
        return self.a.runs.order

    @property
    def ref(self) -> str:
        return self.table.reference


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
    pieces = [x for x in spent["invocations"] if x.get("runs", 0)]  # the pieces that made runs; idle ones apart
    idle = [x for x in spent["invocations"] if not x.get("runs", 0)]
    wall = (f"{spent['run_seconds'] / 60:.1f} min in runs ({spent['runs']} runs) + {spent['prepare_seconds'] / 60:.1f} "
            f"min shared preparation (features, LM); `run-all` wall clock {spent['wall_seconds'] / 60:.1f} min over "
            f"{len(pieces)} invocation(s) that made runs" + (": " if pieces else "") + "; ".join(
                f"{x['total_seconds'] / 60:.1f} min for {x['runs']} run(s) (started {x['when']})" for x in pieces)
            + (f"; {len(idle)} more made no run ({sum(x['total_seconds'] for x in idle) / 60:.1f} min: stopped "
               "early, or still running)" if idle else "")
            if spent["invocations"] else f"{spent['run_seconds'] / 60:.1f} min in runs; `run-all` wall clock not recorded")
    rows = [
        ["data", f"{t.data.name} — scored on the **{t.data.eval_split}** split ({n_images} images, all references)"],
        ["training data", training_data],
        ["vision backbone (frozen)", f"{t.backbones.vision} ({cfg.get('vision_tokens', '?')} tokens × {cfg.get('vision_dim', '?')})"],
        ["language backbone (frozen base)", t.backbones.language + _lm_note(cfg)],
        ["seeds", _seeds_text(t)],
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
                     "undecided": "**undecided** (" + ("no spread over seeds: a point decides nothing" if
                                                       x["interval"].low == x["interval"].high else
                                                       "the CI contains the target") + ")"}
            rows.append([f"`{r.ref}` {x['key']} ≥ {x['goal']:g}", fmt_ci(x["interval"]), words[x["decision"]]])
        else:
            rows.append([f"`{r.ref}` {x['key']} ≥ {x['goal']:g}", f"no finished `{r.ref}` run", "**not met**"])
    return ["## Targets", "", f"Set in the table file; numbers from the {r.table.data.eval_split} split: the mean over "
            "seeds with its seed-level 95% CI. A target is met only when the whole CI lies above it.", "",
            md_table(["target", "measured [95% CI, seeds]", "verdict"], rows), ""]


def section_provenance(r: ReportInput) -> list[str]:
    p = r.a.provenance
    if not p:
        return []
    rows = [[f"`{x['fingerprint']}`", f"`{x['code']}`", x["libraries"], x["device"], x["cpu"], x["threads"],
             x["determinism"], x["runs"], ", ".join(x["variants"])] for x in p["groups"]]
    lines = ["## Provenance", "", "What made the runs behind this report (from each run's config.json): the "
             "fingerprint of the code a result depends on (syntax trees of the model, data, training and run "
             "stages; comments, docs, tests and the report writer left out), the commit, and what changes the "
             f"numerics. The runs were made on {p['machines']} machine(s), by "
             f"{p['fingerprints']} code version(s) (fingerprints) from {p['commits']} commit(s).", "",
             f"{WRITER_LINE} `{writer_label()}`.", "",
             md_table(["fingerprint", "commit", "libraries", "device", "CPU (ISA)", "torch threads", "determinism",
                       "runs", "variants"], rows), ""]
    if p["fingerprints"] > 1 and p["verified"]:
        lines += [f"The runs come from {p['fingerprints']} code versions; `ablate verify` reproduced a run of each "
                  "exactly with the code of another (see \"Evidence\"), so the verdicts compare them.", ""]
    elif p["fingerprints"] > 1:
        lines += [f"**Warning: the runs come from {p['fingerprints']} code versions**; differences between "
                  "variants may partly be differences between code versions.", ""]
    if len(p["numerics"]) > 1:
        setups = "; ".join(f"{label}: {', '.join(f'`{v}`' for v in variants)}" for label, variants in p["numerics"].items())
        lines += [(f"The runs were made on {len(p['numerics'])} numerics setups ({setups}), which give other float "
                   "results for the same seed; " + ("`ablate verify` found them within the seed spread, so no verdict "
                   "names them." if p["numerics_verified"] else "**every verdict comparing runs of two setups names "
                   "it as a confound** (it does not block the decision: across CPUs the same seed gives other bits, "
                   "not another distribution; `ablate verify --cell VARIANT:SEED` on the other machine can lift it)."))
                  , ""]
    if p["stale"]:
        lines += [f"**Warning: {len(p['stale'])} stale run(s)**, made with settings that differ from the table's now: "
                  + ", ".join(f"{v} seed {s}" for v, s in p["stale"])
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


def section_evidence(r: ReportInput) -> list[str]:
    """Where the numbers come from, how big that is, how to recompute a verdict, and what was re-run."""
    sizes, other = r.a.evidence_sizes, next((v for v in r.order if v != r.ref), None)
    lines = ["## Evidence", "",
             "Every run above is committed beside this report as its run record without weights "
             "(`runs/<variant>/seed-<k>/`: settings with hash and provenance, parameters, loss history, metrics, "
             f"per-image values, captions; the large files gzipped): {sizes['runs']} runs, {sizes['total_kib']:,.0f} KiB "
             f"in all, {sizes['median_kib']:,.0f} KiB per run (median; largest {sizes['largest_kib']:,.0f} KiB). "
             "`runs.csv` has one row per run (every metric and probe, the per-image means the seed-level tests "
             "use, the code fingerprint).", ""]
    if other and "CIDEr" in r.a.comparisons:
        lines += [f"Any seed-level verdict can be recomputed from it. This prints the `{other}` row of the ΔCIDEr table "
                  "above (Δ, its 95% CI and Welch's p before Holm; the table's Holm p adjusts that p over the table's "
                  "family), floors included:", "", "```python", *recompute_snippet(other, r.ref), "```", ""]
    if not r.a.verification:
        return lines + ["No cell has been re-verified yet (`ablate verify` retrains chosen cells and compares).", ""]
    rows = [[f"{c['variant']} seed {c['seed']}", c["when"], f"`{c['code']}`", ("**exact**" if c["exact"] else "differs")
             + (f" (not compared: {', '.join(c['not_compared'])})" if c.get("not_compared") else ""),
             "–" if c["exact"] else f"{c['largest']['quantity']}: {fmt(c['largest']['difference'], 4)}",
             "–" if c["exact"] else fmt(c["largest"]["seed_sds"], 2), ", ".join(c["differed"]) or "nothing recorded"]
            for c in r.a.verification]
    return lines + ["Re-verified by `ablate verify` (the cell retrained and rescored by the code named, compared "
                    "with the evidence):", "",
                    md_table(["cell", "when", "code", "result", "largest difference", "in seed SDs", "what differed"],
                             rows), ""]


def recompute_snippet(variant: str, reference: str, metric: str = "CIDEr") -> list[str]:
    """Python that recomputes one seed-level comparison from runs.csv exactly as stats.welch does: each run's mean
    over images, each side's seed SD floored by the root mean square of its runs' image-level SEs
    (stats.image_floor), Welch's SE and degrees of freedom (tests/test_exports_cli.py runs it on a report)."""
    return ["import numpy as np, pandas as pd, scipy.stats as st", 'runs = pd.read_csv("runs.csv")', "",
            "def side(v):  # per-run means, and the floor: the SE a run's mean has from its images",
            f'    r = runs[runs.variant == v]',
            f'    return r["{metric} (mean over images)"].to_numpy(), np.sqrt((r["{metric} (SE over images)"] ** 2).mean())',
            "", f'(x, fx), (y, fy) = side("{variant}"), side("{reference}")',
            "vx, vy = max(x.var(ddof=1), fx**2) / len(x), max(y.var(ddof=1), fy**2) / len(y)  # SDs floored",
            "se, df = np.sqrt(vx + vy), (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))  # Welch",
            "d = x.mean() - y.mean()",
            "half, p = st.t.ppf(0.975, df) * se, 2 * st.t.sf(abs(d) / se, df)",
            'print(f"{d:.3f} [{d - half:.3f}, {d + half:.3f}] p = {p:.2g}")']


def section_answer(r: ReportInput) -> list[str]:
    return report_answer(r.table, r.a, r.looks)


def section_replications(r: ReportInput) -> list[str]:
    if not r.replications:
        return []
    return ["## Replications", "", "The same table run again on other seeds (or on another machine) with `ablate "
            "replicate`, kept as separate evidence under `replications/`: never part of the verdicts above.", "",
            *r.replications]


def section_sequential(r: ReportInput) -> list[str]:
    return r.sequential


def replication_lines(table: Table, a: Analysis, out_dir: Path) -> list[str]:
    """Each replication's verdicts (from its own evidence alone) beside the table's."""
    from ablations.report import replication
    mine, lines = verdict_records(table, a), []
    for evidence in replication.replication_evidence(out_dir):
        seeds = replication.seeds_in(evidence)
        if not seeds:
            continue
        again = analyse(collect(replication.with_seeds(table, seeds), evidence))
        prov = again.runs.provenance
        machines = sorted(set(prov["cpu"])) if "cpu" in prov else ["not recorded"]
        lines += replication.section_lines(evidence.parent.name, seeds, replication.compare(
            mine, verdict_records(table, again)), "; ".join(machines))
    return lines


# The answer first (each verdict in a line, then every test and the forest + strip plot), then how it was made.
SECTIONS = [section_answer, section_expectations, section_sequential, section_comparisons, section_replications, section_targets, section_setup, section_provenance,
            section_failed, section_parameters, section_loss, section_main, section_likelihood, section_budgets,
            section_attention, section_reliance, section_diagnosis, section_gallery, section_timing, section_evidence]
SECTIONS_WITHOUT_RUNS = [section_setup, section_targets, section_provenance, section_failed]  # only failed runs


def write_report(table: Table, runs_dir: Path | None, out_root: Path, data_dir: str | None = None,
                 thumbnails: bool | None = None, log=print) -> Path:
    """Add the finished runs in ``runs_dir`` (if any) to the table's evidence, then write the report from the
    evidence alone. ``thumbnails=None``: pictures of images only for data the project generates (shapes)."""
    evidence = evidence_dir(out_root, table.name)
    local = child(runs_dir, table.name) if runs_dir is not None else None
    plan = until_decided.read_plan(evidence)  # with a sequential plan, the seeds it added too
    # runs left 'to score' (made where Java was missing) are scored first, here, or the report is refused
    for folder in (f for f in (local, evidence) if f is not None and f.is_dir()):
        score_table(until_decided.with_present_seeds(table, folder) if plan else table, [folder], data_dir,
                    lock=(local,) if folder == local else (), log=log)
    if local is not None and local.is_dir():
        incoming = until_decided.with_present_seeds(table, local) if plan else table
        merge = add_runs(incoming, local, evidence, data_dir=data_dir)
        if merge.added or merge.kept:
            log(f"evidence: added {len(merge.added)} run(s) from {local} to {evidence}"
                + "".join(f"\n  {line}" for line in merge.kept + merge.notes))
    table, a, looks = until_decided.analyse_evidence(table, evidence)
    store_references(table, a, evidence, data_dir)
    out_dir = child(out_root, table.name)
    r = ReportInput(table, a, draw_figures(table, a, out_dir, data_dir, thumbnails), replication_lines(table, a, out_dir),
                    until_decided.section_lines(table, looks), looks)
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
    write_verdicts(out_dir, table, a)
    return path


# ---- the writing code's version
CODE_PATHS = ("vlm_core", "ablations", "pyproject.toml")  # what code_version's dirty flag looks at


def code_diff() -> str | None:
    """`git diff HEAD` of the code (CODE_PATHS), or None outside a checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "HEAD", "--no-color", "--no-ext-diff",
                              "--no-textconv", "--", *CODE_PATHS], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode("utf-8", "replace") if out.returncode == 0 else None


def writer_label(code: dict | None = None) -> str:
    """The code label of the report's writer: 'abc1234567', or with uncommitted code changes
    'abc1234567+dirty (diff 0123abcd)', the diff part a short hash of `git diff HEAD` of the code, so that
    two dirty writers can be told apart."""
    code = code_version() if code is None else code
    label = code_label(code)
    if code.get("dirty"):
        diff = code_diff()
        label += f" (diff {hashlib.sha256(diff.encode()).hexdigest()[:8]})" if diff else " (diff unknown)"
    return label


# ---- exports: every verdict with its numbers, from the objects the sections print
VERDICT_COLUMNS = ["section", "variant", "expectation", "expected", "verdict", "test", "epochs", "quantity", "compared_with",
                   "estimate", "ci_low", "ci_high", "bound", "side", "p", "p_adjusted", "decision", "guard", "caveat", "seeds",
                   "seeds_variant", "seeds_compared", "numbers"]


def _number(x) -> float | None:
    """A float as the exports write it: 8 significant digits (as runs.csv), None for NaN / missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return float(f"{float(x):.8g}")


def _interval(i) -> dict:
    return {"estimate": _number(i.estimate), "ci_low": _number(i.low), "ci_high": _number(i.high), "p": _number(i.p),
            "seeds": int(i.n)}


def _arms(variant: str, label: str) -> tuple[str, str | None]:
    """(quantity, the other arm) of a test label, the quantity as the report names it: 'ΔCIDEr meanpool − full' ->
    ('CIDEr', 'full') for a difference (verdicts.comparison_test writes the label), (label, None) for a one-sample
    test ('swap rate')."""
    arm = f" {variant} − "
    if label.startswith("Δ") and arm in label:
        quantity, other = label[1:].split(arm, 1)
        return quantity, other
    return label, None


def verdict_records(table: Table, a: Analysis) -> list[dict]:
    """Every verdict of the report with its tests' numbers: the expectations, the claims inside the model
    (grounding, reliance) and the budget verdicts, as the sections print them (one source: the analysis)."""
    seeds = {v: int(a.summary.loc[v, "seeds"]) for v in a.summary.index} if len(a.summary) else {}
    out = []
    for section, verdicts in (("expectations", a.expectations), ("grounding", a.grounding_verdicts),
                              ("reliance", a.reliance_verdicts)):
        for v in verdicts:
            tests = []
            for t in v.tests:
                quantity, other = _arms(v.variant, t.label)
                tests.append({"test": t.label, "quantity": quantity, "compared_with": other,
                              **_interval(t.interval), "bound": _number(t.bound), "side": t.side,
                              "p_adjusted": _number(t.p_adjusted), "decision": t.decision, "guard": t.guard,
                              "caveat": t.caveat,
                              "seeds_variant": seeds.get(v.variant),
                              "seeds_compared": seeds.get(other) if other else None})
            out.append({"section": section, "variant": v.variant, "expectation": v.expectation, "expected": v.expected,
                        "verdict": v.verdict, "numbers": v.numbers, "tests": tests})
    budget_seeds = {(x["variant"], x["epochs"]): x["seeds"] for x in a.budget_rows}
    for v in a.budget_verdicts:
        label = COMPARED.get(v.quantity, v.quantity)
        tests = [{"test": f"Δ{label} {v.variant} − {v.reference} at {b} epoch{'s' if b != 1 else ''}", "quantity": label,
                  "compared_with": v.reference, **_interval(i), "bound": 0.0, "side": "below" if v.expected else None,
                  "p_adjusted": None, "decision": d, "guard": None, "seeds_variant": budget_seeds.get((v.variant, b)),
                  "seeds_compared": budget_seeds.get((v.reference, b)), "epochs": b}
                 for b, d, i in zip(v.budgets, v.directions, v.differences)]
        out.append({"section": "budgets", "variant": v.variant,
                    "expectation": BUDGET_QUANTITIES[v.quantity] if v.expected else "none",
                    "expected": f"{label} lower than {v.reference}" if v.expected else "no expectation (shown for completeness)",
                    "verdict": v.pattern, "numbers": _budget_sentence(v), "tests": tests, "missing_budgets": list(v.missing)})
    return out


def verdicts_csv(records: list[dict]) -> str:
    """One row per test (a verdict without tests: one row with its test columns empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, VERDICT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        for t in r["tests"] or [{}]:
            writer.writerow({**{k: r[k] for k in ("section", "variant", "expectation", "expected", "verdict", "numbers")},
                             **{k: "" if x is None else x for k, x in t.items()}})
    return buffer.getvalue()


def write_verdicts(out_dir: Path, table: Table, a: Analysis) -> list[dict]:
    """verdicts.csv and verdicts.json beside the report's README (atomic writes)."""
    records = verdict_records(table, a)
    atomic_write_text(out_dir / "verdicts.csv", verdicts_csv(records))
    atomic_write_text(out_dir / "verdicts.json", json.dumps(
        {"table": table.name, "reference": table.reference, "verdicts": records}, indent=1, ensure_ascii=False,
        allow_nan=False) + "\n")
    return records


def draw_figures(table: Table, a: Analysis, out_dir: Path, data_dir: str | None, thumbnails: bool | None) -> dict:
    """Every picture the sections show; images (thumbnails, attention) only where the data may be shown."""
    pictures = {}
    if a.loss:
        pictures["loss"] = figures.loss_plot(a.loss, a.self_critical, out_dir / "loss.png", a.runs.configs)
    forest = figures.forest_plot(a.comparisons, out_dir / "comparisons.png", a.runs)
    if forest:
        pictures["comparisons"] = forest
    if a.budget_rows:
        pictures["budgets"] = figures.budget_plot(a.budget_points, table.data.eval_split, out_dir / "budgets.png")
    if table.show_images if thumbnails is None else thumbnails:
        data = _readable_data(table, data_dir)
        ids = [i for i in a.gallery["ids"] if data and i in data.captions]  # only images of the data set
        pictures["thumbnails"] = figures.thumbnails(ids, data.load_image, out_dir / "gallery") if data else {}
        if data:
            pictures["attention"] = {v: figures.attention_pictures({i: m for i, m in maps.items() if i in data.captions},
                                                                   data.load_image, out_dir / "attention", v)
                                     for v, maps in attention_gallery(a.runs).items()}
    return pictures


def store_references(table: Table, a: Analysis, evidence: Path, data_dir: str | None) -> None:
    """Keep the reference captions of the gallery's images with the evidence (when the data set is readable and
    they are not there yet), so that the gallery shows them wherever the report is regenerated; only those
    few: the data set's text is not republished."""
    missing = [i for i in a.gallery["ids"] if i not in a.gallery["references"]]
    if not missing or not evidence.is_dir():
        return
    data = _readable_data(table, data_dir)
    if data is None:
        return
    references = ReferenceFile(evidence)
    stored = {**references.read(), **{i: list(data.captions[i]) for i in missing if i in data.captions}}
    references.write(stored)
    a.gallery["references"] = {i: stored[i] for i in a.gallery["ids"] if i in stored}


def _readable_data(table: Table, data_dir: str | None):
    try:
        return load_data(table.data, data_dir)
    except (UserError, OSError):
        return None


def _seeds_text(t) -> str:
    """The table's seeds, and any variant that runs other ones (e.g. 5 seeds for the main comparison)."""
    others = {v.name: v.seeds for v in t.variants.values() if v.seeds != t.seeds and not v.sweep_of}
    text = ", ".join(str(s) for s in t.seeds)
    return text + "".join(f"; `{n}`: {', '.join(map(str, s))}" for n, s in others.items())


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
