"""Issue 49: no orphan overwrites a finished run, no folder is taken for a run, evidence is checked for
what it says as well as for its names. Each test here failed on the code before the fix (see its comment)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ablations.cli import app
from ablations.run.record import RunRecord
from vlm_core.errors import UserError

from .micro import snapshot, write_micro

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


REQUIRED = ("config.json", "params.json", "history.json", "captions.json", "per_image.csv", "metrics.json", "DONE")


def _complete(cell: Path) -> bool:
    """Every file a finished record has (read directly, so the check runs on older code too)."""
    return all((cell / n).exists() or (cell / (n + ".gz")).exists() for n in REQUIRED) and \
        isinstance(json.loads((cell / "config.json").read_text()).get("seed"), int)


def _release(record: RunRecord) -> None:
    getattr(record, "release", lambda: None)()  # (older code had no cell lock to release)


def _finished(cell: Path, cider: float = 0.5) -> RunRecord:
    """A complete run record made through the writers a run uses."""
    record = RunRecord(cell)
    record.begin({"seed": 0, "train": {}}, {})
    record.write_params({"trainable": 1})
    record.write_history([{"epoch": 1, "train_loss": 1.0, "dev_loss": 1.0}])
    record.write_captions({"a": "a cat"})
    record.finish(pd.DataFrame({"CIDEr": [cider]}, index=["a"]), {"metrics": {"CIDEr": cider}, "timings": {"train": 1.0}})
    _release(record)
    return RunRecord(cell)


# 1. A second writer of one cell (a rerun beside an orphaned worker) is refused, and touches nothing.
#    Before: the second begin() removed the first writer's folder, the first writer re-created it
#    (atomic_write made its parent) and published a record without config.json / params.json.
def test_a_second_writer_of_a_cell_is_refused_and_the_first_one_publishes_a_complete_record(tmp_path):
    cell = tmp_path / "runs" / "t" / "full" / "seed-0"
    _finished(cell, cider=0.5)
    orphan = RunRecord(cell)
    orphan.begin({"seed": 0, "train": {}}, {})
    work = snapshot(orphan.path)
    rerun = RunRecord(cell)
    with pytest.raises(UserError, match="another process"):
        rerun.begin({"seed": 0, "train": {}}, {})
    assert snapshot(orphan.path) == work  # the live writer's folder is untouched
    orphan.write_params({"trainable": 2})
    orphan.write_history([])
    orphan.write_captions({"a": "a dog"})
    orphan.finish(pd.DataFrame({"CIDEr": [0.7]}, index=["a"]), {"metrics": {"CIDEr": 0.7}, "timings": {"train": 1.0}})
    assert _complete(cell) and RunRecord(cell).metrics()["metrics"]["CIDEr"] == 0.7
    rerun.begin({"seed": 0, "train": {}}, {})  # the lock went with the publication
    _release(rerun)


def _redo_over_a_finished_run(tmp_path: Path) -> tuple[Path, dict, RunRecord]:
    """A finished cell, its bytes, and a second run of it begun (its work folder beside the cell)."""
    cell = tmp_path / "runs" / "t" / "full" / "seed-0"
    _finished(cell)
    before = snapshot(cell)
    writer = RunRecord(cell)
    writer.begin({"seed": 0, "train": {}}, {})
    return cell, before, writer


# 1b. A writer whose work folder was removed under it never re-creates it, and never publishes: the
#     finished record stays byte-identical. Before: the folder came back with only the later files and
#     replaced the finished run.
def test_a_writer_whose_folder_was_removed_never_replaces_the_finished_run(tmp_path):
    import shutil

    cell, before, writer = _redo_over_a_finished_run(tmp_path)
    shutil.rmtree(writer.path)  # what a rerun's clean-up did to an orphan's folder
    with pytest.raises(FileNotFoundError):
        writer.write_params({"trainable": 1})
    with pytest.raises(FileNotFoundError):
        writer.finish(pd.DataFrame({"CIDEr": [1.0]}), {"metrics": {"CIDEr": 1.0}, "timings": {}})
    _release(writer)
    assert snapshot(cell) == before and RunRecord(cell).state() == "done"


def test_an_incomplete_record_is_never_published(tmp_path):
    cell, before, writer = _redo_over_a_finished_run(tmp_path)
    (writer.path / "config.json").unlink()  # a record without its settings
    with pytest.raises(UserError, match="lacks config.json"):
        writer.finish(pd.DataFrame({"CIDEr": [1.0]}), {"metrics": {"CIDEr": 1.0}, "timings": {}})
    _release(writer)
    assert snapshot(cell) == before


# 1c. The driver killed with -9 at several points of a `run-all --force` over finished runs: its pool
#     workers die with it (before: they ran on, holding ~1 GB and a JVM each), and every cell holds a
#     complete record, the old one or the new one, never a mix; the next run-all finishes the table.
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cells(runs: Path) -> list[Path]:
    return sorted(p for p in (runs / "micro").glob("*/seed-*") if p.is_dir())


@pytest.fixture(scope="module")
def finished_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("orphans")
    table = write_micro(root / "micro.toml", seeds=(0, 1), variants=("full", "blind"))
    result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(root / "runs"), "--cache-dir",
                                 str(root / "cache"), "--executor", "local", "--cpus-per-run", "1"])
    assert result.exit_code == 0, result.output
    return root, table


@pytest.mark.parametrize("kill_when", ["first-partial", "first-new-result"])
def test_killing_run_all_kills_its_workers_and_never_leaves_an_incomplete_result(finished_table, kill_when):
    root, table = finished_table
    runs = root / "runs"
    old = {cell: snapshot(cell) for cell in _cells(runs)}
    assert len(old) == 4 and all(_complete(c) for c in old)
    proc = subprocess.Popen([sys.executable, "-m", "ablations.cli", "run-all", str(table), "--force", "--executor",
                             "local", "--cpus-per-run", "1", "--runs-dir", str(runs), "--cache-dir", str(root / "cache")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, end = [], time.time() + 300
    while time.time() < end and proc.poll() is None:
        partial = list((runs / "micro").glob("*/.seed-*.partial"))
        changed = [c for c in old if c.exists() and snapshot(c) != old[c]]
        if (kill_when == "first-partial" and partial) or (kill_when == "first-new-result" and changed):
            workers = _children(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert workers, f"the driver was not killed at {kill_when} (it exited {proc.returncode})"
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "a pool worker outlived its killed run-all"
    for cell in _cells(runs):
        assert _complete(cell), (cell, sorted(p.name for p in cell.iterdir()))
    result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(runs), "--cache-dir", str(root / "cache"),
                                 "--executor", "local", "--cpus-per-run", "1"])
    assert result.exit_code == 0, result.output
    assert [c.name for c in _cells(runs)] and all(_complete(c) for c in _cells(runs))
    assert not list(runs.rglob("*.partial"))


# 2. `--out` takes only a finished or failed run record (or an empty / new folder)
def test_out_refuses_a_folder_holding_only_a_config_json(tmp_path):
    folder = tmp_path / "tool-settings"
    folder.mkdir()
    (folder / "config.json").write_text('{"theme": "dark"}\n')
    before = snapshot(folder)
    result = runner.invoke(app, ["train", "--table", str(write_micro(tmp_path / "micro.toml")), "--out", str(folder)])
    assert result.exit_code == 2 and "is not a run folder" in result.output, result.output
    assert snapshot(folder) == before


def test_out_refuses_the_working_folder(tmp_path, monkeypatch):
    table = write_micro(tmp_path / "micro.toml")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    for out in (".", "..", str(empty)):
        result = runner.invoke(app, ["train", "--table", str(table), "--out", out])
        assert result.exit_code == 2 and "working folder" in result.output, (out, result.output)
    assert list(empty.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["empty", "micro.toml"]


def test_run_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        import importlib

        import vlm_core.atomic as atomic

        importlib.reload(atomic)  # it reads the umask once, at import
        cell = tmp_path / "runs" / "t" / "full" / "seed-0"
        record = RunRecord(cell)
        record.begin({"seed": 0, "train": {}}, {})
        assert oct(record.path.stat().st_mode & 0o777) == oct(0o755)
        _release(record)
    finally:
        os.umask(old)
        importlib.reload(atomic)


def test_a_killed_feature_build_leaves_nothing_behind_the_next_build(tmp_path):
    from vlm_core.atomic import remove_dead_partials

    target = tmp_path / "feats.npy"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    host = socket.gethostname()
    orphan = tmp_path / f".feats.npy.{host}-{int(dead.stdout)}.partial"
    live = tmp_path / f".feats.npy.{host}-{os.getpid()}.partial"
    elsewhere = tmp_path / f".feats.npy.other-host-{int(dead.stdout)}.partial"  # another host's writer: never ours to judge
    for p in (orphan, live, elsewhere):
        p.write_bytes(b"x")
    remove_dead_partials(target)
    assert not orphan.exists() and live.exists() and elsewhere.exists()


# 5. Hub backbones can be pinned (`repo@revision`) and the commit loaded is recorded
def test_a_pinned_hub_backbone_loads_that_revision(monkeypatch):
    import vlm_core.hub as hub

    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    seen = []
    assert hub.load_pretrained("language", "gpt2@0123abc", "gpt2@0123abc", lambda **kw: seen.append(kw) or "m") == "m"
    assert seen == [{"revision": "0123abc"}]
    seen.clear()
    hub.load_pretrained("language", "gpt2", "gpt2", lambda **kw: seen.append(kw))
    assert seen == [{}]

    class Loaded:
        class config:
            _commit_hash = "0123abc"

    assert hub.loaded_revision(Loaded) == "0123abc" and hub.split_revision("openai/clip@v1") == ("openai/clip", "v1")


def test_run_records_name_the_hub_revisions(tmp_path):
    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    provenance = RunRecord(runs / "micro" / "full" / "seed-0").provenance()
    assert provenance["hub_revisions"] == {"vision": None, "language": None}  # random tiny models: no hub commit


def test_tracking_creates_nothing_before_the_preflight_passes(tmp_path, monkeypatch):
    """Before: the MLflow store's folder (./runs) was made before the preflight refused the table."""
    monkeypatch.chdir(tmp_path)
    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))
    table.write_text(table.read_text().replace('[data]\nname = "shapes"', '[data]\nname = "flickr8k"\npath = "nowhere"'))
    result = runner.invoke(app, ["run-all", str(table), "--track", "mlflow"])
    assert result.exit_code == 2 and "nowhere" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["micro.toml"]


@pytest.mark.parametrize("args, message", [
    (["--epochs", "100000"], "train.epochs: must be in"),
    (["--dev-images", "-3"], "data.eval_images: must be in"),
    (["--seed", str(2**40)], "--seed: must be in"),
])
def test_train_options_are_bounded_like_table_keys(tmp_path, args, message):
    result = runner.invoke(app, ["train", "--table", str(write_micro(tmp_path / "micro.toml")), "--out",
                                 str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_caption_options_are_bounded_before_anything_loads(tmp_path):
    result = runner.invoke(app, ["caption", str(tmp_path / "x.png"), "--run", str(tmp_path / "no-run"), "--beams", "100000"])
    assert result.exit_code == 2 and "--beams: must be in" in result.output, result.output


# issue 48 item 5: the committed evidence is first-class
def test_report_elsewhere_starts_from_the_committed_evidence_and_list_counts_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", "shapes", "--out", str(out), "--runs-dir", str(tmp_path / "no-runs")])
    assert result.exit_code == 0, result.output
    assert "30 runs, 886 KiB" in (out / "shapes" / "README.md").read_text()
    listed = runner.invoke(app, ["list", "--runs-dir", str(tmp_path / "no-runs")])
    assert listed.exit_code == 0 and "30 done of 30 runs" in listed.output, listed.output
