"""Nothing outside its folder, no finished result lost: one test per finding of the safety review."""
import json
import os
import struct
import threading
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

import ablations.run.runner as runner_module
from ablations.cli import app
from ablations.run.record import RunRecord, child
from ablations.tables import load_table
from vlm_core.atomic import atomic_write_text
from vlm_core.caption_lm import CaptionCorpus, CaptionLMConfig, build_caption_lm
from vlm_core.data import open_image
from vlm_core.errors import UserError

from .micro import snapshot, write_micro
from .test_data import make_flickr

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# 1. `train --out DIR` never empties a folder that is not a run folder
def test_train_out_refuses_a_folder_of_other_files(tmp_path):
    folder = tmp_path / "checkout"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "notes.txt").write_text("mine\n")
    before = snapshot(folder)
    result = _cli("train", "--table", write_micro(tmp_path / "micro.toml"), "--out", folder)
    assert result.exit_code == 2 and "is not a run folder" in result.output
    assert snapshot(folder) == before
    with pytest.raises(UserError, match="not a run folder"):
        RunRecord(folder).begin({"seed": 0}, {})
    assert snapshot(folder) == before


# 4. a redo that dies half-way keeps the finished run it was replacing
def test_a_killed_redo_keeps_the_old_run(tmp_path, monkeypatch):
    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))
    runs = tmp_path / "runs"
    assert _cli("run-all", table, "--runs-dir", runs, "--cache-dir", tmp_path / "cache").exit_code == 0
    cell = runs / "micro" / "full" / "seed-0"
    before = snapshot(cell)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C does in the middle of training

    monkeypatch.setattr(runner_module, "train_model", killed)
    result = _cli("run-all", table, "--force", "--runs-dir", runs, "--cache-dir", tmp_path / "cache")
    assert result.exit_code != 0
    assert snapshot(cell) == before and RunRecord(cell).state() == "done"


# 2. worker results: see test_evidence.py (test_worker_results_name_only_record_files, ..._size_bound)

# 3. names that become paths are checked where tables load
@pytest.mark.parametrize("edit, key", [
    (lambda t: t.replace('name = "micro"', 'name = "../../escaped-table"'), "table.name"),
    (lambda t: t.replace("[variants.full]", '[variants."/tmp/abs"]'), "variants"),
    (lambda t: t.replace("[variants.full]", '[variants."x[/b]"]'), "variants"),
    (lambda t: t.replace("[variants.full]", '[variants.".hidden"]'), "variants"),
    (lambda t: t + '\n[[sweep]]\nbase = "full"\nkey = "train.lr"\nvalues = ["../x"]\n', "row name"),
])
def test_names_that_would_leave_their_folder_are_refused(tmp_path, edit, key):
    path = tmp_path / "t.toml"
    path.write_text(edit(write_micro(tmp_path / "micro.toml").read_text()))
    with pytest.raises(UserError, match=key) as err:
        load_table(str(path))
    assert "not a usable name" in str(err.value)
    result = _cli("run-all", path, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "not a usable name" in result.output  # a message, not a traceback
    assert not (tmp_path / "escaped-table").exists() and list(tmp_path.parent.glob("escaped-table")) == []


def test_the_last_guard_refuses_a_name_with_a_path_in_it(tmp_path):
    for name in ("../x", "/abs", ".lock", "", "a/b"):
        with pytest.raises(UserError, match="refused"):
            child(tmp_path, name)


# 5. two processes building one cache entry: one builds, the other waits and loads it
def test_two_concurrent_builders_give_one_valid_cache(tmp_path, monkeypatch):
    import vlm_core.caption_lm as caption_lm

    calls = []
    real = caption_lm._train_caption_lm

    def counted(*args):
        calls.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(caption_lm, "_train_caption_lm", counted)
    corpus = CaptionCorpus("t", [f"a red circle number {i}" for i in range(40)], ["a red circle"] * 4)
    cfg = CaptionLMConfig(vocab_size=120, n_layer=1, n_embd=16, n_head=2, epochs=1, batch_size=16)
    results, errors = [], []

    def build():
        try:
            results.append(build_caption_lm(corpus, cfg, tmp_path))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and len(calls) == 1
    entries = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "info.json").exists()
    assert results[0].info["dev_perplexity"] == results[1].info["dev_perplexity"]


# 6. bad input: one clear message each, never a traceback
def _bomb_png(path, width=30000, height=30000):
    """A tiny PNG whose header claims width x height pixels."""
    Image.new("RGB", (1, 1)).save(path, format="PNG")  # (a .jpg name with PNG bytes: PIL goes by content)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("size", [(30000, 30000), (9000, 9000)])  # over PIL's bomb limit; under it but huge
def test_a_decompression_bomb_is_a_message(tmp_path, size):
    root = make_flickr(tmp_path / "f")
    victim = sorted((root / "Images").iterdir())[0]
    _bomb_png(victim, *size)
    with pytest.raises(UserError, match="pixels"):
        open_image(victim)
    result = _cli("data", "check", root)
    assert result.exit_code == 1 and victim.name in result.output and "Traceback" not in result.output
    result = _cli("caption", victim, "--run", tmp_path / "no-run")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_deeply_nested_toml_and_set_values_are_messages(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text(write_micro(tmp_path / "micro.toml").read_text() + "\n[probes]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UserError, match="nested too deeply"):
        load_table(str(path))
    result = _cli("train", "--table", tmp_path / "micro.toml", "--set", "train.lr=" + "[" * 5000 + "]" * 5000,
                  "--out", tmp_path / "run")
    assert result.exit_code == 2 and "nested too deeply" in result.output


# 7. results readable by the group, like any file the user writes
def test_results_are_written_with_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "metrics.json", json.dumps({}))
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


# 7. backbone names 'org/m' and 'org_m' no longer share one feature cache file
def test_backbone_names_map_to_distinct_cache_files(tmp_path):
    from types import SimpleNamespace

    from vlm_core.features import feature_path
    from vlm_core.shapes import ShapesConfig, load_shapes

    data = load_shapes(ShapesConfig(train=4, dev=2, test=2))
    paths = {feature_path(tmp_path, SimpleNamespace(name=n), data, "test") for n in ("org/m", "org_m", "efficientnet-lite0")}
    assert len(paths) == 3 and all(p.parent == tmp_path / "features" for p in paths)
    assert feature_path(tmp_path, SimpleNamespace(name="efficientnet-lite0"), data, "test").name.startswith(
        "efficientnet-lite0__")  # names without '/' keep their old cache file


def test_a_crash_between_the_two_renames_of_a_swap_keeps_the_old_run(tmp_path):
    """replace_dir moves the old folder aside, then the new one in: killed in between, the old one comes back."""
    from vlm_core.atomic import remove_leftovers

    aside = tmp_path / ".seed-0.abc.replaced" / "seed-0"
    aside.mkdir(parents=True)
    (aside / "DONE").write_text("{}")
    (tmp_path / ".seed-0.def.partial").mkdir()  # the new run, never moved in
    remove_leftovers(tmp_path / "seed-0")
    assert (tmp_path / "seed-0" / "DONE").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["seed-0"]
