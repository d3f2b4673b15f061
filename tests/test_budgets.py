"""Verdicts across training budgets: sweep rows over train.epochs, per-budget seed-level verdicts, the
named pattern of each verdict, and the report section with its plot."""
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ablations.decide import budgets
from ablations.cli import app
from ablations.report.collect import TableRuns
from ablations.report.sections import _budget_sentence
from ablations.tables import load_table

from .micro import write_micro

BUDGET_SWEEPS = "".join(f'\n[[sweep]]\nbase = "{b}"\nkey = "train.epochs"\nvalues = [{e}]\n'
                        for e in (1, 4) for b in ("full", "meanpool"))


@pytest.mark.parametrize("directions, wanted, name", [
    (["lower", "lower", "lower"], "lower", "lower at every budget"),
    (["undecided", "undecided", "lower"], "lower", "appears only late (lower from the 3rd budget on, undecided before)"),
    (["undecided", "higher"], "lower", "the opposite of the expectation: appears only late (higher from the 2nd "
                                       "budget on, undecided before)"),
    (["lower", "lower", "undecided"], "lower", "fades (lower up to the 2nd budget, undecided after)"),
    (["lower", "undecided", "higher"], "lower", "flips"),
    (["undecided", "undecided"], "lower", "undecided at every budget"),
    (["higher", "higher"], "lower", "the opposite of the expectation: higher at every budget"),
    (["higher", "higher"], None, "higher at every budget"),
    (["lower", "undecided", "lower", "lower"], "lower", "lower at 3 of 4 budgets, undecided at the others"),
])
def test_pattern_names_the_sequence_of_per_budget_outcomes(directions, wanted, name):
    assert budgets.pattern(directions, wanted) == name


def test_sweep_rows_know_what_they_vary(tmp_path):
    table = load_table(str(write_micro(tmp_path / "b.toml", variants=("full", "meanpool"), extra=BUDGET_SWEEPS)))
    row = table.variants["meanpool-epochs-4"]
    assert (row.sweep_of, row.sweep_key, row.sweep_value, row.train.epochs) == ("meanpool", "train.epochs", 4, 4)
    assert row.model.connector == "meanpool" and row.expect == []
    assert table.variants["meanpool"].sweep_of == ""


def _synthetic(tmp_path, cider_shift: dict[int, float], gap_shift: dict[int, float], n_seeds=4, seed_sd=0.01):
    """full and meanpool at 1, 2 and 4 epochs; meanpool = full + the given shift at each budget. meanpool's
    seeds are full's seeds in reverse order, so its seed mean differs from full's by exactly the shift."""
    table = load_table(str(write_micro(tmp_path / "b.toml", seeds=range(n_seeds), variants=("full", "meanpool"),
                                       extra=BUDGET_SWEEPS)))
    rng = np.random.default_rng(0)
    names = {("full", 2): "full", ("meanpool", 2): "meanpool"}
    names.update({(b, e): f"{b}-epochs-{e}" for b in ("full", "meanpool") for e in (1, 4)})
    runs = {e: [0.1 * e + rng.normal(0, seed_sd) + rng.normal(0, 0.05, 30) for _ in range(n_seeds)] for e in (1, 2, 4)}
    per_image, rows = {}, []
    for (base, epochs), name in names.items():
        per_image[name] = {}
        for s in range(n_seeds):
            values = runs[epochs][s] if base == "full" else runs[epochs][n_seeds - 1 - s]
            shift = (cider_shift[epochs], gap_shift[epochs]) if base == "meanpool" else (0.0, 0.0)
            frame = pd.DataFrame({"CIDEr": values + shift[0], "nll_gap": values + shift[1]})
            per_image[name][s] = frame
            rows.append({"variant": name, "seed": s, **frame.mean().to_dict()})
    table_runs = TableRuns(table, tmp_path, pd.DataFrame(rows), ["full", "meanpool"])
    table_runs.sweep_order = [n for n in table.variants if table.variants[n].sweep_of]
    table_runs.per_image = per_image
    return table_runs


def test_budget_verdicts_find_a_late_verdict_and_a_flip_from_the_runs(tmp_path):
    table_runs = _synthetic(tmp_path, cider_shift={1: 0.0, 2: 0.0, 4: -0.3}, gap_shift={1: -0.3, 2: 0.0, 4: 0.3})
    assert budgets.series(table_runs) == {"full": {1: "full-epochs-1", 2: "full", 4: "full-epochs-4"},
                                  "meanpool": {1: "meanpool-epochs-1", 2: "meanpool", 4: "meanpool-epochs-4"}}
    found = {v.quantity: v for v in budgets.verdicts(table_runs)}
    cider, gap = found["CIDEr"], found["nll_gap"]
    assert cider.expected and not gap.expected  # meanpool's expectation is worse_than_reference (CIDEr)
    assert cider.directions == ["undecided", "undecided", "lower"]
    assert cider.pattern == "appears only late (lower from the 3rd budget on, undecided before)"
    assert gap.directions == ["lower", "undecided", "higher"] and gap.pattern == "flips"
    # The sentence quotes the measured difference at each budget (Welch over the per-seed means).
    late = table_runs.runs.set_index(["variant", "seed"])["CIDEr"]
    diff = late["meanpool-epochs-4"].mean() - late["full-epochs-4"].mean()
    assert f"4 epochs: lower {diff:.3f} [" in _budget_sentence(cider) and "**appears only late" in _budget_sentence(cider)


def test_budget_verdicts_need_the_reference_at_the_same_budget(tmp_path):
    table_runs = _synthetic(tmp_path, cider_shift={1: -0.3, 2: -0.3, 4: -0.3}, gap_shift={1: 0.0, 2: 0.0, 4: 0.0})
    table_runs.sweep_order.remove("full-epochs-4")  # the reference has no 4-epoch runs: that budget is not compared
    cider = next(v for v in budgets.verdicts(table_runs) if v.quantity == "CIDEr")
    assert cider.budgets == [1, 2] and cider.pattern == "lower at every budget"


def _metrics(runs, variant, seed):
    import json

    return json.loads((runs / "micro" / variant / f"seed-{seed}" / "metrics.json").read_text())


def test_run_all_and_report_with_budget_rows(tmp_path):
    runner = CliRunner()
    table = write_micro(tmp_path / "micro.toml", variants=("full", "meanpool"), extra=BUDGET_SWEEPS)
    runs, cache, reports = tmp_path / "runs", tmp_path / "cache", tmp_path / "reports"
    result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(runs), "--cache-dir", str(cache),
                                 "--only", "full", "--only", "meanpool", "--only", "full-epochs-1",
                                 "--only", "meanpool-epochs-1"])
    assert result.exit_code == 0, result.output
    assert (runs / "micro" / "meanpool-epochs-1" / "seed-1" / "metrics.json").exists()
    result = runner.invoke(app, ["report", str(table), "--runs-dir", str(runs), "--out", str(reports)])
    assert result.exit_code == 0, result.output
    text = (reports / "micro" / "README.md").read_text()
    section = text.split("## Verdicts across training budgets")[1].split("\n## ")[0]
    assert (reports / "micro" / "budgets.png").stat().st_size > 1000
    assert re.search(r"^\| `meanpool` \| 1 \| `meanpool-epochs-1` \| 2 \|", section, re.M)
    verdict = re.search(r"^- `meanpool` vs `full` on CIDEr, expected lower: \*\*(.+?)\*\* \(ΔCIDEr, seed-level 95% CI, "
                        r"direction by Holm-adjusted p — "
                        r"1 epoch: (lower|higher|undecided) (-?[0-9.]+) .*; 2 epochs: (lower|higher|undecided) (-?[0-9.]+) ",
                        section, re.M)
    assert verdict, section
    # The 1-epoch difference is Welch's over the stored per-run CIDEr of meanpool-epochs-1 and full-epochs-1.
    cider = {v: [_metrics(runs, v, s)["metrics"]["CIDEr"] for s in (0, 1)] for v in ("meanpool-epochs-1", "full-epochs-1")}
    assert verdict.group(3) == f"{np.mean(cider['meanpool-epochs-1']) - np.mean(cider['full-epochs-1']):.3f}"
    assert "The section's 4 tests (every ablation, quantity and budget) are one family" in text
    # Budget rows stay out of the table's own sections (main table, expectations).
    main = text.split("## Main table")[1].split("\n## ")[0]
    assert "epochs-1" not in main and "epochs-1" not in text.split("## Expected vs observed")[1].split("\n## ")[0]


def test_the_shipped_flickr8k_tiny_table_trains_three_variants_at_four_budgets(tmp_path):
    table = load_table("flickr8k-tiny")
    table_runs = TableRuns(table, tmp_path, pd.DataFrame(), list(table.variants))
    table_runs.sweep_order = [n for n in table.variants if table.variants[n].sweep_of]
    assert budgets.series(table_runs) == {b: {e: b if e == 2 else f"{b}-epochs-{e}" for e in (1, 2, 4, 8)}
                                  for b in ("full", "meanpool", "no-lora")}
    for name in table_runs.sweep_order:  # a budget row differs from its base only in train.epochs
        row, base = table.variants[name], table.variants[table.variants[name].sweep_of]
        assert row.model == base.model and {**vars(row.train), "epochs": base.train.epochs} == vars(base.train)


@pytest.mark.parametrize("sweep, message", [
    ('base = "meanpool"\nkey = "train.epochs"\nvalues = [4]\nexpect = "worse_than_reference"', "take no expectations"),
    ('base = "meanpool"\nkey = "train.epochs"\nvalues = [2]', "is what 'meanpool' already has"),
])
def test_budget_sweeps_refuse_expectations_and_a_repeat_of_their_base(tmp_path, sweep, message):
    from vlm_core.errors import UserError

    path = write_micro(tmp_path / "b.toml", variants=("full", "meanpool"), extra=f"\n[[sweep]]\n{sweep}\n")
    with pytest.raises(UserError, match=rf"b\.toml: sweep\[0\].*{message}"):
        load_table(str(path))


def test_other_sweeps_stay_rows_of_the_table(tmp_path):
    extra = '\n[[sweep]]\nbase = "full"\nkey = "model.num_queries"\nvalues = [4]\n' + BUDGET_SWEEPS
    table = load_table(str(write_micro(tmp_path / "b.toml", variants=("full", "meanpool"), extra=extra)))
    assert not table.variants["full-num_queries-4"].is_budget_row and table.variants["full-epochs-4"].is_budget_row


def test_one_shared_budget_and_a_budget_without_values(tmp_path):
    table_runs = _synthetic(tmp_path, cider_shift={1: -0.3, 2: -0.3, 4: -0.3}, gap_shift={1: 0.0, 2: 0.0, 4: 0.0})
    table_runs.per_image["meanpool-epochs-4"] = {s: f.drop(columns="CIDEr") for s, f in table_runs.per_image["meanpool-epochs-4"].items()}
    table_runs.sweep_order.remove("full-epochs-1")
    cider = next(v for v in budgets.verdicts(table_runs) if v.quantity == "CIDEr")
    assert cider.budgets == [2] and cider.pattern == "lower at the only budget compared"
    assert "not compared at 4 epochs (no CIDEr on one side)" in _budget_sentence(cider)


def test_a_budget_cell_from_two_code_versions_decides_nothing_until_verified(tmp_path):
    """The guards of the other verdicts hold here too: a cell whose runs come from two code fingerprints is
    'not decided (confounded)' and leaves the family, until a verify check reproduced both versions."""
    table_runs = _synthetic(tmp_path, cider_shift={1: -0.3, 2: -0.3, 4: -0.3}, gap_shift={1: 0.0, 2: 0.0, 4: 0.0})
    table_runs.runs["fingerprint"] = np.where(table_runs.runs["variant"] == "meanpool-epochs-4", "new", "old")
    cider = next(v for v in budgets.verdicts(table_runs) if v.quantity == "CIDEr")
    assert cider.directions == ["lower", "lower", "not decided (confounded)"]
    assert cider.pattern == "lower at every budget that could decide; 1 budget(s) not decided (confounded)"
    assert budgets.family_size(budgets.verdicts(table_runs)) == 4  # CIDEr and NLL gap at 4 epochs left out
    table_runs.verification = [{"exact": True, "fingerprints": ["new", "old"]}]
    cider = next(v for v in budgets.verdicts(table_runs) if v.quantity == "CIDEr")
    assert cider.directions == ["lower", "lower", "lower"] and cider.pattern == "lower at every budget"


def test_a_budget_compared_across_machines_names_them(tmp_path):
    """Runs of one budget from two numerics setups (another CPU family) are named at that budget, not blocked."""
    table_runs = _synthetic(tmp_path, cider_shift={1: -0.3, 2: -0.3, 4: -0.3}, gap_shift={1: 0.0, 2: 0.0, 4: 0.0})
    table_runs.runs["numerics"] = np.where(table_runs.runs["variant"] == "meanpool-epochs-4",
                                           "AVX-512, torch 2, 1 thread(s), cpu fp32", "AVX2, torch 2, 1 thread(s), cpu fp32")
    cider = next(v for v in budgets.verdicts(table_runs) if v.quantity == "CIDEr")
    assert list(cider.machines) == [4] and cider.directions[-1] == "lower"  # named, the decision stands
    sentence = _budget_sentence(cider)
    assert "At 4 epochs: machines differ" in sentence and "meanpool-epochs-4 on AVX-512" in sentence
    table_runs.runs["numerics"] = "AVX2, torch 2, 1 thread(s), cpu fp32"  # one machine: nothing to name
    assert not next(v for v in budgets.verdicts(table_runs) if v.quantity == "CIDEr").machines
