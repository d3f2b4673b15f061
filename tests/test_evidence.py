"""Evidence: run records without weights beside the report, reports rebuilt from them alone, tables
finished over several machines, records from elsewhere checked, `ablate verify`."""
import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ablations.cli import app
from ablations.run.provenance import code_fingerprint
from ablations.run.record import RunRecord, check_record_name
from ablations.report.write import WRITER_LINE
from vlm_core.errors import UserError

from .micro import snapshot, write_micro

REPO = Path(__file__).resolve().parents[1]

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _ok(*args):
    result = _cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _without_writer_line(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(WRITER_LINE))


@pytest.fixture(scope="module")
def two_machines(tmp_path_factory):
    """One micro table run whole in one folder, and split by seed over two 'machines' (folders)."""
    root = tmp_path_factory.mktemp("evidence")
    table = write_micro(root / "micro.toml", variants=("full", "meanpool"))
    cache = root / "cache"
    _ok("run-all", table, "--runs-dir", root / "all", "--cache-dir", cache)
    _ok("run-all", table, "--seed", 0, "--runs-dir", root / "m1", "--reports-dir", root / "r1", "--cache-dir", cache)
    _ok("run-all", table, "--seed", 1, "--runs-dir", root / "m2", "--reports-dir", root / "r2", "--cache-dir", cache)
    return {"root": root, "table": table, "cache": cache}


def test_report_ships_evidence_and_rebuilds_from_it_alone(two_machines, tmp_path):
    root, table = two_machines["root"], two_machines["table"]
    out = tmp_path / "reports"
    _ok("report", table, "--runs-dir", root / "all", "--out", out)
    cell = out / "micro" / "runs" / "full" / "seed-0"
    names = sorted(p.name for p in cell.iterdir())
    assert names == sorted(["DONE", "config.json", "params.json", "history.json", "metrics.json", "captions.json.gz",
                            "per_image.csv.gz", "attention_maps.json.gz"])
    assert not (cell / "weights").exists()
    local = RunRecord(root / "all" / "micro" / "full" / "seed-0")
    assert json.loads(gzip.decompress((cell / "captions.json.gz").read_bytes())) == local.captions()
    runs_csv = (out / "micro" / "runs.csv").read_text().splitlines()
    assert len(runs_csv) == 1 + 4 and "fingerprint" in runs_csv[0] and "CIDEr (mean over images)" in runs_csv[0]
    first = (out / "micro" / "README.md").read_text()
    assert "## Evidence" in first and "4 runs" in first
    # no local runs at all: the same report, from the evidence only
    (out / "micro" / "README.md").unlink()
    _ok("report", table, "--runs-dir", tmp_path / "nothing-here", "--out", out)
    assert (out / "micro" / "README.md").read_text() == first
    # a one-character edit of the committed report is a difference the regeneration check sees
    edited = first.replace("## Main table", "## Main tablE")
    assert _without_writer_line(edited) != _without_writer_line((out / "micro" / "README.md").read_text())


def test_a_table_split_over_two_machines_merges_into_the_same_report(two_machines, tmp_path):
    root, table, cache = two_machines["root"], two_machines["table"], two_machines["cache"]
    both, merged = tmp_path / "both", tmp_path / "merged"
    shutil.copytree(root / "m1", both)  # one folder holding the runs of both machines
    for variant in ("full", "meanpool"):
        shutil.copytree(root / "m2" / "micro" / variant / "seed-1", both / "micro" / variant / "seed-1")
    _ok("report", table, "--runs-dir", both, "--out", tmp_path / "one")
    _ok("evidence", "add", table, "--from", root / "m1", "--from", root / "m2", "--reports-dir", merged)
    _ok("report", table, "--runs-dir", tmp_path / "none", "--out", merged)

    def same_runs(text):  # the wall-clock row counts run-all invocations: 1 in one folder, 2 when merged
        return [line for line in _without_writer_line(text).splitlines() if not line.startswith("| wall time")]

    assert same_runs((merged / "micro" / "README.md").read_text()) == same_runs(
        (tmp_path / "one" / "micro" / "README.md").read_text())
    assert "over 2 invocation(s)" in (merged / "micro" / "README.md").read_text()
    # and the split made the same results as one machine running every cell
    _ok("report", table, "--runs-dir", root / "all", "--out", tmp_path / "whole")
    assert (merged / "micro" / "runs.csv").read_text() == (tmp_path / "whole" / "micro" / "runs.csv").read_text()
    # run-all on the merged evidence starts no finished run (a fresh machine: empty runs folder)
    before = snapshot(merged)
    out = _ok("run-all", table, "--runs-dir", tmp_path / "fresh", "--reports-dir", merged, "--cache-dir", cache)
    assert "nothing to do" in out and "finished in the evidence" in out
    assert snapshot(merged) == before and not (tmp_path / "fresh" / "micro" / "full").exists()


def test_two_invocations_in_the_same_second_on_one_host_both_count(tmp_path, monkeypatch):
    """A fast machine starts the two halves of a table within one second: both are kept when merged."""
    import time as time_module

    from ablations.report.evidence import _merge_timing
    from ablations.run.table_files import TableTiming
    monkeypatch.setattr(time_module, "strftime", lambda fmt, *a: "2026-01-01 00:00:00")
    for half in ("m1", "m2"):
        timing = TableTiming(tmp_path / half, "micro")
        timing.path.parent.mkdir(parents=True)
        timing.begin(0.0, {})
        timing.run_finished()
    _merge_timing(tmp_path / "m2" / "micro", tmp_path / "m1" / "micro")
    assert len(TableTiming.at(tmp_path / "m1" / "micro").read()) == 2


def test_two_different_results_for_one_cell_are_both_kept_and_refused(two_machines, tmp_path):
    root, table = two_machines["root"], two_machines["table"]
    ev = tmp_path / "reports"
    _ok("evidence", "add", table, "--from", root / "m1", "--reports-dir", ev)
    other = tmp_path / "other" / "micro" / "full" / "seed-0"
    shutil.copytree(root / "m1" / "micro" / "full" / "seed-0", other)
    captions = json.loads((other / "captions.json").read_text())
    captions[next(iter(captions))] = "a different caption"
    (other / "captions.json").write_text(json.dumps(captions))
    before = snapshot(ev)
    result = _cli("evidence", "add", table, "--from", tmp_path / "other", "--reports-dir", ev)
    assert result.exit_code == 2 and "full seed 0" in result.output and "nothing was picked" in result.output
    assert snapshot(ev) == before
    _ok("evidence", "add", table, "--from", tmp_path / "other", "--reports-dir", ev, "--replace")
    assert RunRecord(ev / "micro" / "runs" / "full" / "seed-0").captions() == captions


def _copy_cell(two_machines, tmp_path):
    src = two_machines["root"] / "m1" / "micro" / "full" / "seed-0"
    dest = tmp_path / "elsewhere" / "micro" / "full" / "seed-0"
    shutil.copytree(src, dest)
    return dest


@pytest.mark.parametrize("tamper", ["settings", "copied-hash", "extra-file", "symlink", "wrong-seed"])
def test_evidence_from_elsewhere_is_checked(two_machines, tmp_path, tamper):
    cell = _copy_cell(two_machines, tmp_path)
    config = json.loads((cell / "config.json").read_text())
    if tamper == "settings":  # other settings under the stored hash
        config["train"]["lr"] = 0.5
    elif tamper == "copied-hash":
        config["config_hash"] = json.loads((two_machines["root"] / "m2" / "micro" / "full" / "seed-1" /
                                            "config.json").read_text())["config_hash"]
    elif tamper == "wrong-seed":
        shutil.move(cell, cell.with_name("seed-1"))
        cell = cell.with_name("seed-1")
    (cell / "config.json").write_text(json.dumps(config))
    if tamper == "extra-file":
        (cell / "evil.py").write_text("print('hi')\n")
    elif tamper == "symlink":
        (cell / "history.json").unlink()
        (cell / "history.json").symlink_to("/etc/hostname")
    result = _cli("evidence", "add", two_machines["table"], "--from", tmp_path / "elsewhere",
                  "--reports-dir", tmp_path / "reports")
    assert result.exit_code == 2, result.output
    assert "refused" in result.output
    assert not (tmp_path / "reports" / "micro" / "runs" / "full").exists()


@pytest.mark.parametrize("name", ["../../../escape.txt", "/tmp/abs.txt", "weights/../../x", "notes.txt",
                                  ".hidden", "weights/.x", "captions.json.gz.gz"])
def test_worker_results_name_only_record_files(tmp_path, name):
    with pytest.raises(UserError, match="not a file of the run-record format"):
        RunRecord(tmp_path / "run").write_files({"config.json": b"{}", name: b"x", "DONE": b"{}"})
    assert not (tmp_path / "run").exists() and not list(tmp_path.parent.glob("escape.txt"))


def test_worker_results_have_a_size_bound(tmp_path, monkeypatch):
    import ablations.run.record as record

    monkeypatch.setattr(record, "MAX_FILE_BYTES", 10)
    with pytest.raises(UserError, match="bound"):
        RunRecord(tmp_path / "run").write_files({"config.json": b"x" * 11})
    check_record_name("weights/lora/adapter_model.safetensors")  # the format's own files pass


def test_verify_is_exact_on_the_evidence_and_sees_a_changed_setting(two_machines, tmp_path):
    root, table, cache = two_machines["root"], two_machines["table"], two_machines["cache"]
    ev = tmp_path / "reports"
    _ok("evidence", "add", table, "--from", root / "all", "--reports-dir", ev)
    out = _ok("verify", table, "--cells", 2, "--reports-dir", ev, "--cache-dir", cache)
    assert out.count(": exact") == 2, out
    checks = json.loads((ev / "micro" / "runs" / "verify.json").read_text())
    assert [(c["variant"], c["seed"], c["exact"]) for c in checks] == [("full", 0, True), ("meanpool", 0, True)]
    _ok("report", table, "--runs-dir", tmp_path / "none", "--out", ev)
    assert "**exact**" in (ev / "micro" / "README.md").read_text()
    result = _cli("verify", table, "--cells", 1, "--reports-dir", ev, "--cache-dir", cache, "--set", "train.lr=0.01")
    assert result.exit_code == 2 and "differs: largest" in result.output and "seed SDs" in result.output
    assert "settings (train.lr=0.01)" in result.output
    assert len(json.loads((ev / "micro" / "runs" / "verify.json").read_text())) == 2  # a perturbed check is not stored
    out = _ok("verify", table, "--cell", "meanpool:1", "--reports-dir", ev, "--cache-dir", cache)  # a named cell
    assert "verify meanpool seed 1" in out and out.count(": exact") == 1, out
    assert json.loads((ev / "micro" / "runs" / "verify.json").read_text())[-1]["seed"] == 1
    result = _cli("verify", table, "--cell", "meanpool:7", "--reports-dir", ev, "--cache-dir", cache)
    assert result.exit_code == 2 and "--cell meanpool:7: no finished run" in result.output


def test_caption_on_evidence_says_how_to_retrain_the_cell(two_machines, tmp_path):
    ev = tmp_path / "reports"
    _ok("evidence", "add", two_machines["table"], "--from", two_machines["root"] / "m1", "--reports-dir", ev)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    result = _cli("caption", img, "--run", ev / "micro" / "runs" / "meanpool" / "seed-0")
    assert result.exit_code == 2
    assert "no weights/" in result.output and "ablate train --table micro --variant meanpool --seed 0" in result.output


def test_fingerprint_ignores_comments_and_docstrings_but_not_code(tmp_path):
    for pkg in ("vlm_core", "ablations"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_fingerprint(tmp_path)
    target = tmp_path / "vlm_core" / "train.py"
    text = target.read_text()
    target.write_text('"""Another docstring."""\n# a comment\n' + text.split('"""', 2)[2])
    (tmp_path / "ablations" / "report.py").write_text("x = 1\n")  # the report writer cannot change a result
    assert code_fingerprint(tmp_path) == before
    target.write_text(text.replace("def ", "def _renamed_", 1))
    assert code_fingerprint(tmp_path) != before


def test_evidence_is_never_written_through_a_link(two_machines, tmp_path):
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine\n")
    (tmp_path / "reports" / "micro" / "runs").mkdir(parents=True)
    (tmp_path / "reports" / "micro" / "runs" / "full").symlink_to(victim)
    result = _cli("evidence", "add", two_machines["table"], "--from", two_machines["root"] / "m1",
                  "--reports-dir", tmp_path / "reports")
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


# ---- issue 49: evidence is checked for what it says, not only for its names
@pytest.fixture(scope="module")
def reported(two_machines):
    """m1's runs as a reports folder of their own, with the eval references stored beside them."""
    root = two_machines["root"]
    out = root / "reported"
    _ok("report", two_machines["table"], "--runs-dir", root / "m1", "--out", out)
    assert (out / "micro" / "runs" / "references.json.gz").exists()
    return out


def _tampered(reported, tmp_path, edit) -> Path:
    src = tmp_path / "src"
    shutil.copytree(reported, src)
    edit(src / "micro" / "runs")
    return src


def _edit_cider(runs: Path, per_image_too: bool) -> None:
    cell = runs / "full" / "seed-0"
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics["metrics"]["CIDEr"] = 99.0
    (cell / "metrics.json").write_text(json.dumps(metrics))
    if per_image_too:  # consistent with the per-image column: only scoring the captions again catches it
        import pandas as pd

        frame = pd.read_csv(cell / "per_image.csv.gz", index_col=0)
        frame["CIDEr"] = 99.0
        frame.to_csv(cell / "per_image.csv.gz")


@pytest.mark.parametrize("case, message", [
    ("cider-edited", "not the mean of its per-image values"),
    ("cider-and-per-image-edited", "is not what its captions score"),
    ("fifo", "not a regular file"),
    ("timing", "timing.json: entry 0 needs"),
    ("bomb", "expands beyond"),
    ("metrics-shape", "metrics.json: 'metrics' must map names to numbers"),
    ("history-shape", "history.json: must be a list"),
    ("done-shape", "DONE: must be a JSON object with 'seconds'"),
])
def test_evidence_content_is_checked_before_it_is_added(reported, tmp_path, case, message):
    def edit(runs: Path) -> None:
        cell = runs / "full" / "seed-0"
        if case.startswith("cider"):
            _edit_cider(runs, per_image_too=case == "cider-and-per-image-edited")
        elif case == "fifo":
            (cell / "metrics.json").unlink()
            os.mkfifo(cell / "metrics.json")
        elif case == "timing":
            (runs / "timing.json").write_text('[{"when": 5}]')
        elif case == "bomb":  # 65 MiB of zeros in a 65-kB gzip
            (cell / "captions.json.gz").write_bytes(gzip.compress(b"0" * (65 * 2**20), 9))
        elif case == "metrics-shape":
            m = json.loads((cell / "metrics.json").read_text())
            m["metrics"] = ["BLEU-4", 0.3]
            (cell / "metrics.json").write_text(json.dumps(m))
        elif case == "history-shape":
            (cell / "history.json").write_text('{"epoch": 1}')
        elif case == "done-shape":
            (cell / "DONE").write_text("[]")

    src = _tampered(reported, tmp_path, edit)
    dest = tmp_path / "reports"
    result = _cli("evidence", "add", reported.parent / "micro.toml", "--from", src, "--reports-dir", dest)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) <= 3, result.output  # one message (the console may wrap it)
    assert not (dest / "micro" / "runs" / "full" / "seed-0").exists()


@pytest.mark.parametrize("target, damage", [
    ("full/seed-0/metrics.json", b'{"metrics": 1}'),
    ("full/seed-0/history.json", b"[1, 2]"),
    ("full/seed-0/per_image.csv.gz", "truncate"),
    ("full/seed-0/captions.json.gz", b"not gzip"),
    ("full/seed-0/config.json", b"[]"),
    ("timing.json", b'{"runs": 1}'),
    ("verify.json", b'[{"seed": "x"}]'),
    ("references.json.gz", b"not gzip"),
    ("sequential.json", b'{"looks": "x"}'),
    ("sequential.json", b'{"looks": [3, 5], "max_seeds": 1, "shape": 0.25, "alpha": 0.05}'),
    ("sequential.json", b'{"looks": [3, 1000000], "max_seeds": 8, "shape": 0.25, "alpha": 0.05}'),
    ("full/seed-0/metrics.json", "to_score"),
])
def test_a_damaged_evidence_file_is_one_line_in_report(reported, tmp_path, target, damage):
    out = tmp_path / "out"
    shutil.copytree(reported, out)
    path = out / "micro" / "runs" / target
    if damage == "to_score":  # a run scored later whose to-do list is not one
        damage = json.dumps({**json.loads(path.read_text()), "to_score": {"metrics": "CIDEr"}}).encode()
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] if damage == "truncate" else damage)
    result = _cli("report", reported.parent / "micro.toml", "--out", out)
    assert result.exit_code == 2, result.output
    assert target.split("/")[-1].removesuffix(".gz") in result.output and "Traceback" not in result.output, result.output


def test_report_never_writes_through_a_linked_table_folder(reported, tmp_path):
    victim = tmp_path / "victim"
    shutil.copytree(reported / "micro", victim)
    (victim / "README.md").write_text("someone else's\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "micro").symlink_to(victim)
    result = _cli("report", reported.parent / "micro.toml", "--out", out)
    assert result.exit_code == 2 and "symbolic link" in result.output, result.output
    assert (victim / "README.md").read_text() == "someone else's\n"
