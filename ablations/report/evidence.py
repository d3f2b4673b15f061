"""A table's evidence: its finished run records without weights, committed as reports/<table>/runs/.

Runs are made in a local runs folder (or on other machines); `add_runs` copies the finished ones into
the evidence, where the report is written from and where `run-all` looks before it starts a run, so a
table can be finished over several machines and sittings. Evidence from elsewhere is data, not trust:
each record's file names are checked against the record format, its hash is recomputed from its stored
settings, and two different results for one cell are both kept visible instead of one being picked.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vlm_core.atomic import atomic_write_json
from vlm_core.errors import UserError

from ablations.run.record import RunRecord, cell_path
from ablations.run.table_files import ReferenceFile, TableTiming
from ablations.run.planning import expected_hash
from ablations.tables import Table


@dataclass
class Merge:
    """What add_runs did, one line per cell it touched."""

    added: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # records whose metrics could not be recomputed, and why


RECOMPUTED = ("BLEU", "CIDEr")  # the scorers (scoring.CAPTION_METRICS) run again: seconds per record


class References:
    """The reference captions a record from elsewhere is scored against: never the incoming folder's own (it
    could be edited with the metrics), but the evidence's stored ones where they cover its images, else the
    table's own data set (read once, where it is readable here) for a record made with the table's settings."""

    def __init__(self, table: Table, evidence: Path, data_dir: str | None):
        self.table, self.stored, self.data_dir, self._data = table, ReferenceFile(evidence).read(), data_dir, None

    def of(self, images: set[str], current: bool) -> dict[str, list[str]] | None:
        if images <= set(self.stored):
            return self.stored
        if not current:  # its data settings are not the table's: never read a path a record names
            return None
        if self._data is None:
            from ablations.table_data import load_data

            try:
                self._data = load_data(self.table.data, self.data_dir).captions
            except (UserError, OSError):
                self._data = {}
        return self._data if images <= set(self._data) else None


def check_metrics(record: RunRecord, references: References, current: bool) -> str:
    """Score the record's stored captions again (the scorers of the report, `scoring.score`) and refuse stored
    metrics that differ: an edited number with a recomputed hash passes every other check. Returns why it could
    not (no references here, no Java), or ''."""
    if not record.has("metrics.json"):
        return ""  # a failed run has no metrics
    captions = record.captions()
    refs = references.of(set(captions), current)
    if refs is None:
        return "metrics not recomputed: its data set's references are not readable here (--data-dir)"
    if shutil.which("java") is None:
        return "metrics not recomputed: no Java here for the PTB tokenizer"
    from ablations.measure.scoring import Captions, score

    again, _ = score(Captions({i: refs[i] for i in captions}, captions), RECOMPUTED)
    stored = record.metrics()["metrics"]
    for name in ("BLEU-4", "CIDEr"):
        if name in stored and not math.isclose(stored[name], again[name], rel_tol=1e-6, abs_tol=1e-9):
            raise UserError(f"{record.path / 'metrics.json'}: {name} {stored[name]:.6g} is not what its captions "
                            f"score ({again[name]:.6g}); refused")
    return ""


def table_folder(source: Path, table: str) -> Path:
    """A table's folder inside what the user points at: a runs folder (runs/<table>/), a reports folder
    (reports/<table>/runs/), or the table's folder itself."""
    source = Path(source)
    for candidate in (source / table / "runs", source / table):
        if candidate.is_dir():
            return candidate
    return source


def add_runs(table: Table, source_dir: Path, evidence: Path, replace: bool = False, data_dir: str | None = None) -> Merge:
    """Copy every finished (or failed) run of ``table`` in ``source_dir`` into ``evidence`` (both table
    folders). A cell already in the evidence with the same settings and the same result is left alone; with
    the same settings and another result it is a conflict (both stay, an error lists them) unless ``replace``."""
    merge = Merge()
    TableTiming.at(source_dir).read()  # checked before anything is added: a bad one must not arrive half-way
    references = References(table, evidence, data_dir)
    for v in table.variants.values():
        for seed in v.seeds:
            src = RunRecord(cell_path(source_dir, v.name, seed))
            if src.path.resolve() == cell_path(evidence, v.name, seed).resolve() or src.state() not in ("done", "failed"):
                continue
            label = f"{v.name} seed {seed}"
            src.check_incoming(seed)
            dest = RunRecord(cell_path(evidence, v.name, seed))
            for p in (evidence, dest.path.parent, dest.path):  # never write through a committed link
                if p.is_symlink():
                    raise UserError(f"{p}: a symbolic link in the evidence (refused; replace it with a folder)")
            want = expected_hash(table, v, seed)
            if dest.state() in ("done", "failed"):
                if dest.config_hash() == src.config_hash():
                    if dest.result_digest() == src.result_digest():
                        merge.same.append(label)
                        continue
                    if not replace:
                        merge.conflicts.append(f"{label}: evidence {_describe(dest)} vs {src.path}: {_describe(src)}")
                        continue
                elif dest.config_hash() == want:
                    merge.kept.append(f"{label}: the evidence's record is current, {src.path} is stale (not added)")
                    continue
                elif src.config_hash() != want:
                    merge.kept.append(f"{label}: neither record is current; the evidence's is kept")
                    continue
            note = check_metrics(src, references, current=src.config_hash() == want)
            if note:
                merge.notes.append(f"{label}: {note}")
            dest.write_files(src.evidence_files(), weights=False)
            merge.added.append(label)
    _merge_timing(source_dir, evidence)
    if merge.conflicts:
        raise UserError("two different results for one cell with the same settings; nothing was picked:\n  "
                        + "\n  ".join(merge.conflicts) + "\n(rerun `ablate evidence add` with --replace to take "
                        "the incoming records, or remove the one you do not want)")
    return merge


def _describe(record: RunRecord) -> str:
    p = record.provenance()
    if record.state() == "failed":
        return f"failed ({record.failure().get('reason', '?')}), host {p.get('host', '?')}"
    m = record.metrics()["metrics"]
    return (f"BLEU-4 {m.get('BLEU-4', float('nan')):.4f} CIDEr {m.get('CIDEr', float('nan')):.4f}, result "
            f"{record.result_digest()}, host {p.get('host', '?')}, code {p.get('code', {}).get('fingerprint', '?')}")


def _merge_timing(source_dir: Path, evidence: Path) -> None:
    """The run-all invocations of both folders, each once (they are the report's wall time)."""
    ours, theirs = TableTiming.at(evidence), TableTiming.at(source_dir)
    merged = {}
    for e in ours.read() + theirs.read():  # one invocation = (host, start, id); a later snapshot has more runs
        key = (e.get("host"), e.get("when"), e.get("id"))
        if key not in merged or e.get("runs", 0) >= merged[key].get("runs", 0):
            merged[key] = e
    entries = sorted(merged.values(), key=lambda e: e.get("when", ""))
    if entries != ours.read():
        atomic_write_json(ours.path, entries)
