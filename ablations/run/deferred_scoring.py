"""Runs left 'to score', and their scoring where Java is.

A run made with run.score = later (`ablate run-all --score later`, or `auto` on a machine without Java, such as a
GPU node) trains, captions and probes, and records its captions with metrics.json's ``to_score`` naming what
waits: the metrics that need Java (pycocoevalcap's PTB tokenizer, METEOR, SPICE), the swap probes that read
tokenized text, and the cross-entropy model's captions of a self-critical run. `ablate score` (and `ablate
report`, before it reads the evidence) finishes such records here with the runner's own score_stage, so a run
scored later holds what a run scored in place holds; ``ran_on`` says which host ran each stage.
"""
from __future__ import annotations

import gzip
import io
import json
import platform
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from vlm_core.atomic import LockHeld, exclusive_lock
from vlm_core.errors import UserError

from ablations.run.planning import expected_hash
from ablations.run.preflight import java_version
from ablations.run.record import RunRecord, cell_path
from ablations.run.table_files import ReferenceFile
from ablations.tables import Table

TO_SCORE = "to_score"  # metrics.json: what a run left for a machine with Java


def waiting(record: RunRecord) -> dict | None:
    """The ``to_score`` entry of a finished run that waits for its Java metrics, else None."""
    if record.state() != "done":
        return None
    return record.metrics().get(TO_SCORE)


def unscored(table: Table, folder: Path) -> list[tuple[str, int]]:
    """(variant, seed) of every run of ``table`` in the table folder ``folder`` that waits to be scored."""
    return [(v.name, s) for v in table.variants.values() for s in v.seeds
            if waiting(RunRecord(cell_path(folder, v.name, s))) is not None]


def keep_references(table_dir: Path, refs: dict[str, list[str]]) -> None:
    """Store the eval split's references beside runs that will be scored later (runs/<table>/references.json.gz),
    so that they can be scored where the data set is not (the evidence keeps only the gallery's)."""
    stored = ReferenceFile(table_dir)
    known = stored.read()
    if any(known.get(i) != r for i, r in refs.items()):
        stored.write({**known, **refs})


class References:
    """The reference captions a waiting run is scored against: those stored beside it where they cover its
    images, else the table's own data set (read once) for a run made with the table's current settings."""

    def __init__(self, table: Table, folder: Path, data_dir: str | None):
        self.table, self.file, self.data_dir, self._data = table, ReferenceFile(folder), data_dir, None
        self.stored = self.file.read()

    def of(self, images: set[str], current: bool, where: Path) -> dict[str, list[str]]:
        if images <= set(self.stored):
            return self.stored
        if current:
            if self._data is None:
                from ablations.table_data import load_data

                try:
                    self._data = load_data(self.table.data, self.data_dir).captions
                except (UserError, OSError):
                    self._data = {}
            if images <= set(self._data):
                return self._data
        raise UserError(f"{where}: no references for its {len(images)} captions: not all in {self.file.path}, and "
                        + ("the table's data set is not readable here (give --data-dir)" if current else
                           "its settings are not the table's now (the data set is read only for current runs)"))


def _file(files: dict[str, bytes], name: str) -> tuple[str, bytes]:
    """A record file by its plain name, stored plain or gzipped: (the name it is stored under, its plain bytes)."""
    if name in files:
        return name, files[name]
    return name + ".gz", gzip.decompress(files[name + ".gz"])


def _put(files: dict[str, bytes], stored_as: str, data: bytes) -> None:
    files[stored_as] = gzip.compress(data, 9, mtime=0) if stored_as.endswith(".gz") else data  # as evidence_files


def score_record(record: RunRecord, refs: dict[str, list[str]]) -> dict:
    """Score a waiting run in its folder (metrics.json and per_image.csv rewritten, the folder replaced whole);
    returns its new metrics.json."""
    from ablations.run.runner import SCORE, score_stage, with_scores  # torch and the model code: only when scoring

    record.check_content()
    files = record.read_files()
    metrics_name, raw = _file(files, "metrics.json")
    metrics = json.loads(raw)
    todo = metrics.pop(TO_SCORE)
    per_image_name, raw = _file(files, "per_image.csv")
    index = raw.split(b"\n", 1)[0].split(b",", 1)[0].decode()  # the image-id column: read as text ("007" stays)
    per_image = pd.read_csv(io.BytesIO(raw), index_col=0, dtype={index: str})
    captions = json.loads(_file(files, "captions.json")[1])
    start = time.time()
    scored = score_stage(refs, captions, todo["metrics"], record.config()["probes"]["swap_seed"],
                         todo.get("captions_xe"), swap_probes=bool(todo.get("probes")))
    summary, per_image = with_scores(metrics, per_image, scored)
    summary["timings"][SCORE] = summary["timings"].get(SCORE, 0.0) + time.time() - start
    summary["ran_on"] = {**summary.get("ran_on", {}), SCORE: platform.node()}
    _put(files, metrics_name, (json.dumps(summary, indent=2) + "\n").encode())
    _put(files, per_image_name, per_image.to_csv().encode())
    record.write_files(files)
    return summary


def score_table(table: Table, folders: list[Path], data_dir: str | None = None, lock: tuple[Path, ...] = (),
                log: Callable[[str], None] = print) -> int:
    """Score every waiting run of ``table`` in the table folders ``folders`` (a runs folder's runs/<table>, the
    evidence); those in ``lock`` (runs folders) each under its cell's lock, as a run's writer holds it. Returns
    how many were scored; no Java here while some wait is one line naming them."""
    waiting_runs = {Path(f): unscored(table, Path(f)) for f in folders if Path(f).is_dir()}
    count = sum(map(len, waiting_runs.values()))
    if not count:
        return 0
    try:
        java_version()
    except UserError as err:
        names = "; ".join(f"{f}: " + ", ".join(f"{v} seed {s}" for v, s in cells)
                          for f, cells in waiting_runs.items() if cells)
        raise UserError(f"{count} run(s) of '{table.name}' are not scored yet (made where Java was missing, "
                        f"run.score = later): {names}. Their metrics need Java: {err}; run `ablate score "
                        f"{table.name}` (or `ablate report`) on a machine with Java 17") from err
    for folder, cells in waiting_runs.items():
        refs = References(table, folder, data_dir)
        for variant, seed in cells:
            record = RunRecord(cell_path(folder, variant, seed))
            current = record.is_current(expected_hash(table, table.variants[variant], seed))
            chosen = refs.of(set(record.captions()), current, record.path)
            try:
                if folder in map(Path, lock):
                    with exclusive_lock(record.path, "this run"):
                        summary = score_record(record, chosen)
                else:
                    summary = score_record(record, chosen)
            except LockHeld as err:
                raise UserError(str(err)) from err
            m = summary["metrics"]
            log(f"scored {variant} seed {seed} ({folder}): CIDEr {m.get('CIDEr', float('nan')):.3f}, "
                f"BLEU-4 {m.get('BLEU-4', float('nan')):.3f}")
    return count
