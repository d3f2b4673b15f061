"""A table's evidence: its finished run records without weights, committed as reports/<table>/runs/.

Runs are made in a local runs folder (or on other machines); `add_runs` copies the finished ones into
the evidence, where the report is written from and where `run-all` looks before it starts a run, so a
table can be finished over several machines and sittings. Evidence from elsewhere is data, not trust:
each record's file names are checked against the record format, its hash is recomputed from its stored
settings, and two different results for one cell are both kept visible instead of one being picked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlm_core.atomic import atomic_write_json
from vlm_core.errors import UserError

from .record import RunRecord, TableTiming, cell_path
from .planning import expected_hash
from .tables import Table


@dataclass
class Merge:
    """What add_runs did, one line per cell it touched."""

    added: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)


def table_folder(source: Path, table: str) -> Path:
    """A table's folder inside what the user points at: a runs folder (runs/<table>/), a reports folder
    (reports/<table>/runs/), or the table's folder itself."""
    source = Path(source)
    for candidate in (source / table / "runs", source / table):
        if candidate.is_dir():
            return candidate
    return source


def add_runs(table: Table, source_dir: Path, evidence: Path, replace: bool = False) -> Merge:
    """Copy every finished (or failed) run of ``table`` in ``source_dir`` into ``evidence`` (both table
    folders). A cell already in the evidence with the same settings and the same result is left alone; with
    the same settings and another result it is a conflict (both stay, an error lists them) unless ``replace``."""
    merge = Merge()
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
    for e in ours.read() + theirs.read():  # one invocation = (host, start); a later snapshot has more runs
        key = (e.get("host"), e.get("when"))
        if key not in merged or e.get("runs", 0) >= merged[key].get("runs", 0):
            merged[key] = e
    entries = sorted(merged.values(), key=lambda e: e.get("when", ""))
    if entries != ours.read():
        atomic_write_json(ours.path, entries)
