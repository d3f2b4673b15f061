"""The files of a table folder beside its run folders (runs/<table>/ locally, reports/<table>/runs/ as
evidence): timing.json (one entry per `run-all`), verify.json (`ablate verify` checks), references.json.gz
(the eval split's references, for the report), sequential.json (the plan of `run-all --until-decided`, in the
evidence), and .lock (one `run-all` per table folder at a time)."""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import platform
import time
from pathlib import Path

from vlm_core.atomic import LockHeld, atomic_write, atomic_write_json, exclusive_lock, remove_leftovers
from vlm_core.errors import UserError

from ablations.run.record import child, is_number, read_bounded, read_gzip


def read_json_list(path: Path) -> list[dict]:
    """A table-level JSON file holding a list of objects ([] when absent), bounded and checked."""
    if not path.exists() and not path.is_symlink():
        return []
    try:
        entries = json.loads(read_bounded(path))
    except (ValueError, OSError, RecursionError) as err:
        raise UserError(f"{path}: not readable JSON ({err})") from err
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: must be a JSON list of objects")
    return entries


class TableTiming:
    """timing.json: one entry per `run-all` invocation, rewritten after each run, so a killed
    invocation keeps the time of everything it finished."""

    def __init__(self, runs_dir: Path, table: str):
        self.path = child(runs_dir, table) / "timing.json"
        self.start = time.time()

    @classmethod
    def at(cls, table_dir: Path) -> "TableTiming":
        """The timing of a table folder (runs/<table>/ or the evidence's reports/<table>/runs/)."""
        table_dir = Path(table_dir).resolve()
        return cls(table_dir.parent, table_dir.name)

    def read(self) -> list[dict]:
        entries = read_json_list(self.path)
        for k, e in enumerate(entries):
            if not (isinstance(e.get("when"), str) and isinstance(e.get("runs"), int)
                    and is_number(e.get("total_seconds")) and is_number(e.get("prepare_seconds", 0))):
                raise UserError(f"{self.path}: entry {k} needs 'when' (text), 'runs' (a whole number) and "
                                "'total_seconds' (a number)")
        return entries

    def begin(self, prepare_seconds: float, parts: dict[str, float]) -> None:
        # "id" tells apart two invocations on one host in the same second (a fast machine does that)
        entries = self.read() + [{"when": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
                                  "id": f"{os.getpid()}-{time.time_ns()}",
                                  "prepare_seconds": round(prepare_seconds, 1),
                                  "prepare_parts": {k: round(v, 1) for k, v in parts.items()}, "runs": 0,
                                  "total_seconds": round(time.time() - self.start, 1)}]
        atomic_write_json(self.path, entries)

    def run_finished(self) -> None:
        entries = self.read()
        entries[-1]["runs"] += 1
        entries[-1]["total_seconds"] = round(time.time() - self.start, 1)
        atomic_write_json(self.path, entries)


class VerifyLog:
    """verify.json in a table folder: the `ablate verify` checks of its cells, newest last."""

    def __init__(self, table_dir: Path):
        self.path = Path(table_dir) / "verify.json"

    def read(self) -> list[dict]:
        entries = read_json_list(self.path)
        for k, e in enumerate(entries):
            if not (isinstance(e.get("variant"), str) and isinstance(e.get("seed"), int)):
                raise UserError(f"{self.path}: check {k} needs 'variant' (text) and 'seed' (a whole number)")
        return entries

    def add(self, checks: list[dict]) -> None:
        atomic_write_json(self.path, self.read() + checks)


class ReferenceFile:
    """references.json.gz in a table's evidence folder: the reference captions of the eval split, written once
    from the data set, so that a report shows them beside the gallery without the data on disk."""

    def __init__(self, table_dir: Path):
        self.path = Path(table_dir) / "references.json.gz"

    def read(self) -> dict[str, list[str]]:
        if not self.path.exists():
            return {}
        try:
            refs = json.loads(read_gzip(self.path))
        except (ValueError, RecursionError) as err:
            raise UserError(f"{self.path}: not valid JSON ({err})") from err
        if not isinstance(refs, dict) or not all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                                                 for v in refs.values()):
            raise UserError(f"{self.path}: expected {{image id: [reference captions]}}")
        return refs

    def write(self, refs: dict[str, list[str]]) -> None:
        data = gzip.compress(json.dumps(refs, sort_keys=True).encode(), 9, mtime=0)
        atomic_write(self.path, lambda p: Path(p).write_bytes(data))


MAX_LOOKS, MAX_LOOK_SEEDS = 20, 1000  # a stored plan is simulated look by look: bound it before that


class SequentialPlan:
    """sequential.json in a table's evidence folder: the plan of `ablate run-all --until-decided` (planned looks,
    max seeds, boundary shape, alpha), written by the driver before it adds seeds, so that `ablate report` replays
    the same looks from the evidence on any machine. Absent: the table is decided at fixed seeds."""

    def __init__(self, table_dir: Path):
        self.path = Path(table_dir) / "sequential.json"

    def read(self) -> dict | None:
        if not self.path.exists() and not self.path.is_symlink():
            return None
        try:
            plan = json.loads(read_bounded(self.path))
        except (ValueError, OSError, RecursionError) as err:
            raise UserError(f"{self.path}: not readable JSON ({err})") from err
        whole = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
        if not (isinstance(plan, dict) and isinstance(plan.get("looks"), list) and plan["looks"]
                and all(whole(n) for n in plan["looks"]) and whole(plan.get("max_seeds"))
                and is_number(plan.get("shape")) and is_number(plan.get("alpha")) and 0 < plan["alpha"] < 1):
            raise UserError(f"{self.path}: needs 'looks' (a list of whole numbers), 'max_seeds' (a whole number), "
                            "'shape' (a number) and 'alpha' (a number between 0 and 1)")
        if len(plan["looks"]) > MAX_LOOKS or not all(2 <= n <= MAX_LOOK_SEEDS for n in plan["looks"] + [plan["max_seeds"]]):
            raise UserError(f"{self.path}: at most {MAX_LOOKS} looks of 2 to {MAX_LOOK_SEEDS} seeds per arm "
                            "(the boundary is simulated for each look)")
        return plan

    def write(self, plan: dict) -> None:
        atomic_write_json(self.path, plan)


@contextlib.contextmanager
def table_lock(runs_dir: Path, table: str):
    """One run-all per output folder: a second one is refused (the OS drops the lock on any exit)."""
    path = child(runs_dir, table)
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        fh.close()
        raise UserError(f"{path}: another 'ablate run-all' is already writing here (lock {path / '.lock'}); "
                        f"wait for it to finish or use another --runs-dir") from err
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        clear_dead_writers(path)
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def clear_dead_writers(table_dir: Path) -> None:
    """Remove what killed writers left in a table folder (their .partial / .replaced folders), cell by cell,
    only where the cell's own lock is free: a live writer's folder is never touched."""
    for leftover in sorted(Path(table_dir).glob("*/.seed-*.*")):
        if leftover.suffix not in (".partial", ".replaced") or not leftover.is_dir():
            continue
        cell = leftover.parent / leftover.name[1:].split(".", 1)[0]
        try:
            with exclusive_lock(cell, "this run"):
                remove_leftovers(cell)
        except LockHeld:
            continue


