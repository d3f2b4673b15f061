"""Checks before any training: what would otherwise fail only after the first run has trained (Java for
pycocoevalcap when the runs score in place, the data folder, write access, the device, the Ray cluster). Each
failure is one message naming the fix; nothing is created on the way (no runs folder, no lock)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from vlm_core.caption_files import check_source
from vlm_core.device import resolve_device
from vlm_core.errors import UserError
from vlm_core.flickr8k import SPLIT_FILES

from ablations.table_data import data_source, resolve_data_dir
from ablations.tables import Table

MIN_JAVA = 11  # pycocoevalcap's PTB tokenizer and METEOR jars; the README asks for 17


def java_version() -> int:
    """The major version of the `java` on the PATH; UserError when there is none or it is too old."""
    java = shutil.which("java")
    if java is None:
        raise UserError("Java not found on the PATH: pycocoevalcap's tokenizer and METEOR need it to score "
                        "captions (install Java 17, e.g. `apt-get install openjdk-17-jre-headless`)")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"{java}: cannot run `java -version` ({err}); install Java 17") from err
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not found:
        raise UserError(f"{java}: `java -version` printed no version; install Java 17")
    major = int(found.group(1)) if found.group(1) != "1" else int(found.group(2) or 0)  # "1.8" is Java 8
    if major < MIN_JAVA:
        raise UserError(f"{java} is Java {major}; pycocoevalcap needs Java {MIN_JAVA} or newer (install Java 17)")
    return major


def writable(path: Path, what: str, flag: str) -> None:
    """``path`` can be created or written: the nearest existing folder on its way accepts a new file."""
    path = Path(path).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is not a folder; give another {flag}")
    try:
        fd = os.open(existing / f".ablate-preflight-{os.getpid()}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as err:
        raise UserError(f"{what} {path}: cannot write in {existing} ({err.strerror}); fix its permissions or "
                        f"give another {flag}") from err
    os.close(fd)
    os.unlink(existing / f".ablate-preflight-{os.getpid()}")


def data_folder(table: Table, data_dir: str | None) -> None:
    """The files the table's data set is read from exist (a data file's are only read when the runs start)."""
    if table.data.format:
        try:
            check_source(data_source(table.data), table.data.format)
        except UserError as err:
            raise UserError(f"{err}; fix it in {table.path}") from err
        return
    if table.data.name != "flickr8k":
        return
    folder = resolve_data_dir(table.data, data_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: Flickr8k data directory not found (give --data-dir, set $ABLATE_FLICKR8K, or "
                        f"fix data.path in {table.path})")
    missing = [name for name in ("Flickr8k.token.txt", *SPLIT_FILES.values()) if not (folder / name).exists()]
    if missing and not (folder / "captions.txt").exists():
        raise UserError(f"{folder}: missing {', '.join(missing)} (the Flickr8k caption and split files)")
    if not (folder / "Images").is_dir():
        raise UserError(f"{folder}: no Images/ folder")


def ray_address(address: str | None) -> None:
    """An explicit host:port must answer (a quick TCP connect); 'auto' and a local cluster are Ray's to find."""
    if importlib.util.find_spec("ray") is None:
        raise UserError("--executor ray needs Ray: pip install -e '.[ray]'")
    if not address or address == "auto" or ":" not in address:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except (OSError, ValueError) as err:
        raise UserError(f"--ray-address {address}: nothing answers there ({err}); start the cluster "
                        "(`ray start --head`) or leave --ray-address out for a local one") from err


def when_to_score(table: Table) -> str:
    """Settle run.score for every run of this run-all (the driver decides once, so that every worker agrees):
    'auto' becomes 'now' where a usable Java is on the PATH, else 'later'; 'now' without Java is refused before
    anything trains. Returns a line to show when the runs will be left 'to score', else ''."""
    later = (f"the runs record their captions 'to score' (the metrics that need Java); `ablate score {table.name}` "
             "or `ablate report` computes them where Java is")
    if table.run.score == "later":
        return f"run.score = 'later': {later}"
    try:
        java_version()
    except UserError as err:
        if table.run.score == "now":
            raise UserError(f"{err}; or run with --score later (scored afterwards, where Java is)") from err
        table.run.score = "later"
        return f"no usable Java here ({str(err).split(':')[0]}): {later}"
    table.run.score = "now"
    return ""


def preflight(table: Table, runs_dir: Path, cache_dir: Path, data_dir: str | None) -> list[str]:
    """Every check; returns notes to show (e.g. that scoring waits for a machine with Java)."""
    notes = [when_to_score(table)]
    data_folder(table, data_dir)
    writable(runs_dir, "runs folder", "--runs-dir")
    writable(cache_dir, "cache folder", "--cache-dir")
    resolve_device(table.run.device)
    return [n for n in notes if n]
