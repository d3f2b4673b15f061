"""`ablate run-all` + `ablate report` on a micro table: files, sections, numbers, resume, determinism."""
import json
import re

import pandas as pd
import scipy.stats
import pytest
from typer.testing import CliRunner

from ablations.cli import app
from ablations.table_data import load_data
from ablations.tables import load_table

from .micro import snapshot, spy_on, write_micro

runner = CliRunner()


@pytest.fixture(scope="module")
def micro_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    table = write_micro(root / "micro.toml", extra='\n[targets]\nCIDEr = -100.0\n"BLEU-4" = 100.0\nminutes = 1000\n')
    runs, cache, reports = root / "runs", root / "cache", root / "reports"
    result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(runs), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    return {"table": table, "runs": runs, "cache": cache, "reports": reports, "first_output": result.output}


def test_run_all_stores_every_run(micro_runs):
    for variant in ("full", "blind", "seed-recipe"):
        for seed in (0, 1):
            d = micro_runs["runs"] / "micro" / variant / f"seed-{seed}"
            for name in ("DONE", "config.json", "params.json", "history.json", "captions.json", "per_image.csv",
                         "metrics.json", "weights/connector_projection.safetensors", "weights/model_config.json"):
                assert (d / name).exists(), d / name
            m = json.loads((d / "metrics.json").read_text())
            assert set(m["metrics"]) >= {"BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
            assert {"swap_rate", "nll_gap", "perceptual_score", "empty_rate", "distinct_1"} <= set(m["probes"])
            assert len(json.loads((d / "captions.json").read_text())) == 8
    assert (micro_runs["runs"] / "micro" / "full" / "seed-0" / "weights" / "lora" / "adapter_model.safetensors").exists()


def test_rerun_trains_nothing(micro_runs):
    before = snapshot(micro_runs["runs"] / "micro")
    result = runner.invoke(app, ["run-all", str(micro_runs["table"]), "--runs-dir", str(micro_runs["runs"]),
                                 "--cache-dir", str(micro_runs["cache"])])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    assert snapshot(micro_runs["runs"] / "micro") == before


SECTIONS = ("## Setup", "## Targets", "## Provenance", "## Trainable parameters", "## Loss per epoch", "## Main table",
            "## Comparisons with `{ref}`", "## Expected vs observed", "## Diagnosis of degenerate variants",
            "## Gallery", "## Time per stage")


def _report(runs, table, out):
    result = runner.invoke(app, ["report", str(table), "--runs-dir", str(runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return (out / table.stem / "README.md").read_text() if (out / table.stem).exists() else \
        next(out.glob("*/README.md")).read_text()


def _metrics(runs, variant, seed, name="micro"):
    return json.loads((runs / name / variant / f"seed-{seed}" / "metrics.json").read_text())


def test_report_sections_and_numbers_match_runs(micro_runs):
    text = _report(micro_runs["runs"], micro_runs["table"], micro_runs["reports"])
    out = micro_runs["reports"] / "micro"
    for section in SECTIONS:
        assert section.format(ref="full") in text, section
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "comparisons.png").stat().st_size > 1000 and "](comparisons.png)" in text
    n_train = len(load_data(load_table(str(micro_runs["table"])).data).splits["train"])
    assert f"| training data | every image of the train split ({n_train:,}) |" in text
    assert list((out / "gallery").glob("*.png"))
    # Main-table numbers are the mean ± std over the stored seeds.
    for variant in ("full", "blind", "seed-recipe"):
        ciders = [_metrics(micro_runs["runs"], variant, s)["metrics"]["CIDEr"] for s in (0, 1)]
        expected = f"{pd.Series(ciders).mean():.3f} ± {pd.Series(ciders).std():.3f}"
        row = next(line for line in text.splitlines() if line.startswith(f"| {variant} | 2 |"))
        assert expected in row, (row, expected)
    # Likelihood swap: the seed-level mean of the stored per-run gaps; images: per-image gaps averaged over seeds.
    gaps = pd.concat([pd.read_csv(micro_runs["runs"] / "micro" / "full" / f"seed-{s}" / "per_image.csv",
                                  index_col=0)["nll_gap"] for s in (0, 1)], axis=1)
    seed_mean = gaps.mean(axis=0).mean()
    per_image = gaps.mean(axis=1)
    p_full = scipy.stats.wilcoxon(per_image.values).pvalue
    assert re.search(rf"^\| full \| {seed_mean:.3f} \[[-0-9.]+, [-0-9.]+\] \| {(per_image > 0).mean():.1%} \| "
                     rf"{p_full:.2g} \| {len(per_image)} \|", text, re.M)
    assert re.search(r"^\| blind \| 0\.000 \[0\.000, 0\.000\] \| 0\.0% \| 1 \|", text, re.M)  # identical tokens
    # Seed-level comparison: Welch's t over the per-run CIDEr of the stored runs.
    full = [_metrics(micro_runs["runs"], "full", s)["metrics"]["CIDEr"] for s in (0, 1)]
    blind = [_metrics(micro_runs["runs"], "blind", s)["metrics"]["CIDEr"] for s in (0, 1)]
    welch = scipy.stats.ttest_ind(blind, full, equal_var=False)
    diff = pd.Series(blind).mean() - pd.Series(full).mean()
    row = next(line for line in text.split("### ΔCIDEr")[1].splitlines() if line.startswith("| blind |"))
    assert f"| blind | {diff:.3f} [" in row and (f"| {welch.pvalue:.2g} |" in row or "| – |" in row), row
    # Every variant has a computed verdict; an EOS collapse is described by measured probabilities.
    for variant in ("full", "blind", "seed-recipe"):
        assert re.search(rf"^\| {re.escape(variant)} \|.*\*\*(held|not held|inconclusive)\*\*", text, re.M), variant
    seed = [_metrics(micro_runs["runs"], "seed-recipe", s)["probes"] for s in (0, 1)]
    if sum(p["empty_rate"] for p in seed) / 2 >= 0.5:
        p_start = sum(p["p_eos_start"] for p in seed) / 2
        assert f"P(EOS) at the first position is {p_start:.2f}" in text
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert list(summary.index) == ["full", "blind", "seed-recipe"]
    # Targets: each line with the measured number and a verdict (thresholds chosen to be surely met / missed).
    # A metric target is judged on the seed-level CI: met only when the whole CI lies above it.
    # (the micro runs' corpus metrics can be exactly equal over seeds: then no spread, and nothing is decided)
    cider = pd.Series([_metrics(micro_runs["runs"], "full", s)["metrics"]["CIDEr"] for s in (0, 1)])
    verdict = ("met (the CI lies above" if cider.std() > 0 else "**undecided** (no spread over seeds")
    assert re.search(rf"^\| `full` CIDEr ≥ -100 \| {cider.mean():.3f} \[[-0-9.]+, [-0-9.]+\] \| {re.escape(verdict)}",
                     text, re.M)
    bleu = pd.Series([_metrics(micro_runs["runs"], "full", s)["metrics"]["BLEU-4"] for s in (0, 1)])
    assert (f"**not met** (the CI lies below; the mean is short by {100 - bleu.mean():.3f})" in text if bleu.std() > 0
            else "| `full` BLEU-4 ≥ 100 | 0.000 [0.000, 0.000] | **undecided** (no spread" in text)
    assert re.search(r"^\| whole table wall time ≤ 1000 min \| [0-9.]+ min \| met \|$", text, re.M)
    # Provenance: one code version, no stale run.
    assert "matches the table's current settings" in text and "Warning" not in text.split("## Provenance")[1].split("##")[0]


def test_run_folders_record_code_version_config_hash_and_libraries(micro_runs):
    from ablations.run.identity import config_hash

    cfg = json.loads((micro_runs["runs"] / "micro" / "full" / "seed-0" / "config.json").read_text())
    prov = cfg["provenance"]
    assert len(prov["code"]["source_hash"]) == 16
    assert len(prov["code"]["git_commit"]) == 40 and isinstance(prov["code"]["dirty"], bool)
    assert {"torch", "transformers", "peft", "pycocoevalcap"} <= set(prov["libraries"])
    assert all(prov["libraries"][k] for k in ("torch", "transformers", "peft", "pycocoevalcap"))
    assert prov["device"] == "cpu" and "CPU cores" in prov["machine"]
    settings = {k: cfg[k] for k in ("table", "variant", "data", "backbones", "caption_lm", "model", "train", "probes",
                                    "precision", "seed", "eval_split")}
    assert cfg["config_hash"] == config_hash(settings)


def test_a_changed_table_key_makes_finished_runs_stale_and_they_are_redone(micro_runs, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(micro_runs["runs"], runs)
    table = tmp_path / "micro.toml"
    table.write_text(micro_runs["table"].read_text().replace("max_new_tokens = 8", "max_new_tokens = 7"))
    before = (runs / "micro" / "full" / "seed-0" / "captions.json").stat().st_mtime_ns
    result = runner.invoke(app, ["run-all", str(table), "--only", "full", "--seeds", "1", "--runs-dir", str(runs),
                                 "--cache-dir", str(micro_runs["cache"])])
    assert result.exit_code == 0, result.output
    assert "redo full seed 0: stale" in result.output and "finished 1 run(s)" in result.output
    cfg = json.loads((runs / "micro" / "full" / "seed-0" / "config.json").read_text())
    assert cfg["train"]["max_new_tokens"] == 7
    assert (runs / "micro" / "full" / "seed-0" / "captions.json").stat().st_mtime_ns != before
    # Kept on request, a stale run is flagged by `list` and by the report.
    result = runner.invoke(app, ["run-all", str(table), "--keep-stale", "--only", "blind", "--seeds", "1",
                                 "--runs-dir", str(runs), "--cache-dir", str(micro_runs["cache"])])
    assert "keep blind seed 0: STALE" in result.output and "nothing to do" in result.output
    text = _report(runs, table, tmp_path / "reports")
    assert "stale run(s)" in text and "blind seed 0" in text.split("stale run(s)")[1].split("\n")[0]


def test_a_renamed_reference_variant_still_gets_every_section(micro_runs, tmp_path):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(micro_runs["runs"], runs)
    (runs / "micro" / "full").rename(runs / "micro" / "base")
    table = tmp_path / "micro.toml"
    text = micro_runs["table"].read_text().replace("[variants.full]", "[variants.base]")
    table.write_text(text.replace('[table]\n', '[table]\nreference = "base"\n', 1))
    report = _report(runs, table, tmp_path / "reports")
    for section in SECTIONS:
        assert section.format(ref="base") in report, section
    assert "### ΔCIDEr" in report and "| blind |" in report.split("### ΔCIDEr")[1]
    assert "Loss falls every epoch (base" in report and "`base` CIDEr ≥ -100" in report
    assert "matches the table's current settings" in report  # a rename keeps runs current
    bad = tmp_path / "bad.toml"
    bad.write_text(text)  # no variant named full, no reference declared
    result = runner.invoke(app, ["report", str(bad), "--runs-dir", str(runs), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "table.reference: no variant 'full'" in result.output


def test_timing_is_recorded_per_invocation_and_run(micro_runs):
    timing = json.loads((micro_runs["runs"] / "micro" / "timing.json").read_text())
    assert timing[0]["runs"] == 6 and timing[0]["total_seconds"] > 0
    done = json.loads((micro_runs["runs"] / "micro" / "full" / "seed-0" / "DONE").read_text())
    assert done["seconds"] > 0


def test_list_shows_tables_and_run_states(micro_runs):
    result = runner.invoke(app, ["list", "--runs-dir", str(micro_runs["runs"])])
    assert result.exit_code == 0
    for name in ("shapes", "flickr8k-tiny", "flickr8k-smollm2", "seed", "seed-recipe", "frozen-qformer"):
        assert name in result.output


def test_same_seed_same_results(micro_runs, tmp_path):
    """Determinism: the same table and seed on CPU give identical captions and metrics."""
    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))
    result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(tmp_path / "runs"),
                                 "--cache-dir", str(micro_runs["cache"])])
    assert result.exit_code == 0, result.output
    a = micro_runs["runs"] / "micro" / "full" / "seed-0"
    b = tmp_path / "runs" / "micro" / "full" / "seed-0"
    assert json.loads((a / "captions.json").read_text()) == json.loads((b / "captions.json").read_text())
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["metrics"] == mb["metrics"] and ma["probes"] == mb["probes"]
    assert (a / "per_image.csv").read_bytes() == (b / "per_image.csv").read_bytes()


def test_dev_checks_inside_epochs_reach_the_history_and_the_report(micro_runs, tmp_path):
    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full-checked",))
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    common = ["--runs-dir", str(runs), "--cache-dir", str(micro_runs["cache"])]
    assert runner.invoke(app, ["run-all", str(table), *common]).exit_code == 0
    history = json.loads((runs / "micro" / "full" / "seed-0" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0.5, 1, 1.5, 2]
    result = runner.invoke(app, ["report", str(table), "--runs-dir", str(runs), "--out", str(reports)])
    assert result.exit_code == 0, result.output
    text = (reports / "micro" / "README.md").read_text()
    assert "inside each epoch (0.5, 1, 1.5, 2 epochs)" in text and "dev falls at every check" in text
    dev = [row["dev_loss"] for row in history]
    full_row = next(line for line in text.splitlines() if line.startswith("| full | ") and " → " in line)
    assert " → ".join(f"{x:.3f}" for x in dev) in full_row  # all four points, in order
    assert full_row.endswith(f"| {dev[-1] - dev[-2]:+.4f} |")  # the last change: still falling?
    assert (reports / "micro" / "loss.png").exists()


def test_caption_command_uses_a_saved_run(micro_runs, tmp_path):
    from vlm_core.shapes import ShapesConfig, load_shapes

    data = load_shapes(ShapesConfig(seed=7, train=24, dev=8, test=8))
    img = tmp_path / "x.png"
    data.load_image(data.splits["test"][0]).save(img)
    run = micro_runs["runs"] / "micro" / "full" / "seed-0"
    result = runner.invoke(app, ["caption", str(img), "--run", str(run), "--cache-dir", str(micro_runs["cache"]),
                                 "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(str(img))]
    assert len(lines) == 1 and "\t" in lines[0]


def test_caption_command_decodes_as_the_run_was_scored(micro_runs, tmp_path, monkeypatch):
    from vlm_core.model import CaptionModel
    from vlm_core.shapes import ShapesConfig, load_shapes

    seen, _ = spy_on(monkeypatch, CaptionModel, "generate")
    img = tmp_path / "x.png"
    load_shapes(ShapesConfig(seed=7, train=24, dev=8, test=8)).load_image("shapes_00032.png").save(img)
    run = micro_runs["runs"] / "micro" / "full" / "seed-0"
    train = json.loads((run / "config.json").read_text())["train"]
    result = runner.invoke(app, ["caption", str(img), "--run", str(run), "--cache-dir", str(micro_runs["cache"])])
    assert result.exit_code == 0, result.output
    assert {k: seen[-1][k] for k in ("max_new_tokens", "num_beams", "no_repeat_ngram_size", "length_penalty")} == {
        k: train[k] for k in ("max_new_tokens", "num_beams", "no_repeat_ngram_size", "length_penalty")}
    assert seen[-1].get("num_return_sequences", 1) == 1  # the run does not rerank: one caption per image
    result = runner.invoke(app, ["caption", str(img), "--run", str(run), "--cache-dir", str(micro_runs["cache"]),
                                 "--beams", "2", "--no-repeat-ngram-size", "3"])
    assert result.exit_code == 0, result.output
    assert seen[-1]["num_beams"] == 2 and seen[-1]["no_repeat_ngram_size"] == 3
    assert seen[-1]["max_new_tokens"] == train["max_new_tokens"]
