"""run-all checks what would fail only after training before it trains: one message each, nothing created."""
import os
import subprocess

import pytest
from typer.testing import CliRunner

from ablations.cli import app
from ablations.run.preflight import java_version

from .micro import write_micro
from .test_data import make_flickr

runner = CliRunner()


def _run_all(table, tmp_path, *extra):
    result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(tmp_path / "runs"),
                                 "--cache-dir", str(tmp_path / "cache"), *map(str, extra)])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing left behind
    return result.output


def test_no_java_on_the_path(tmp_path, monkeypatch):
    """Scoring in place needs Java; without it run-all would leave the runs 'to score' (test_deferred_scoring)."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert "Java not found on the PATH" in _run_all(write_micro(tmp_path / "micro.toml"), tmp_path, "--score", "now")


def test_an_old_java_is_named(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'java version "1.8.0_392"\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(Exception, match="Java 8"):
        java_version()


def test_a_missing_split_file(tmp_path):
    data = make_flickr(tmp_path / "flickr")
    (data / "Flickr_8k.devImages.txt").unlink()
    table = tmp_path / "f.toml"
    table.write_text(write_micro(tmp_path / "micro.toml").read_text()
                     .replace('[data]\nname = "shapes"', f'[data]\nname = "flickr8k"\npath = "{data}"'))
    out = _run_all(table, tmp_path)
    assert "Flickr_8k.devImages.txt" in out and "missing" in out


def test_a_read_only_runs_folder(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    if os.geteuid() == 0:  # root writes through mode bits: make the folder immutable instead
        subprocess.run(["chattr", "+i", str(parent)], check=True)
    else:
        parent.chmod(0o555)
    try:
        result = runner.invoke(app, ["run-all", str(write_micro(tmp_path / "micro.toml")), "--runs-dir",
                                     str(parent / "runs"), "--cache-dir", str(tmp_path / "cache")])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(parent)], check=True)
        else:
            parent.chmod(0o755)
    assert result.exit_code == 2 and "runs folder" in result.output and "cannot write" in result.output
    assert not (parent / "runs").exists()
