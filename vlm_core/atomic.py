"""Atomic file writes: a reader never sees a half-written file, even after SIGKILL."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[Path], None], make_parent: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename tmp over ``path`` (same directory, so rename is atomic).
    ``make_parent=False`` for files of a folder someone else may remove (a run's work folder): a writer
    whose folder is gone fails instead of re-creating it."""
    path = Path(path)
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: the folder being written is gone (removed by another process)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # what open() would give, not mkstemp's 0600
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: setting it briefly later would race with other threads


def _umask() -> int:
    return _UMASK


def atomic_write_text(path: str | Path, text: str, make_parent: bool = True) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), make_parent)


def atomic_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` then put tmp_dir in ``path``'s place: a folder (a saved model, a run record)
    appears under its final name only once complete. Each writer has its own tmp folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path, ".partial")
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_dir(tmp, path)


def temp_dir(path: Path, suffix: str) -> Path:
    """A new hidden folder beside ``path`` (``.<name>.<random><suffix>``), with the mode a plain mkdir gets
    under the umask: mkdtemp's 0700 would otherwise become the finished folder's mode."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{Path(path).name}.", suffix=suffix, dir=Path(path).parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def replace_dir(done: Path, path: Path) -> Path:
    """Move the complete folder ``done`` (same parent) to ``path``; what was at ``path`` is removed only
    after the new folder is in place, so a crash keeps one of the two under a recognisable name."""
    _fsync_dir(done)
    old = None
    if path.exists():
        old = temp_dir(path, ".replaced")
        os.replace(path, old / path.name)
    os.replace(done, path)
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


@contextlib.contextmanager
def build_lock(path: str | Path):
    """Held while one process builds a cache entry at ``path``: a second builder waits here, then finds the
    first one's result in place (callers check for it again inside the lock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            remove_leftovers(path)  # no other builder is alive now: what a killed one left is garbage
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str):
    """Hold ``.<name>.lock`` beside ``path`` while one process writes it; a second writer is refused at once
    (not made to wait: the holder may be a long run). The OS drops the lock when its holder dies."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    fh = open(lock, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        fh.seek(0)
        owner = fh.read().strip() or "?"
        fh.close()
        raise LockHeld(f"{path}: {what} is being written by another process (pid {owner}, lock {lock}); "
                       "nothing was touched") from err
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


class LockHeld(RuntimeError):
    """Another live process holds the lock (see exclusive_lock)."""


def owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def partial_owner() -> str:
    """Who writes a ``.<name>.<owner>.partial`` file: this host and process (a cache may be shared by hosts)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_dead_partials(path: str | Path) -> None:
    """Remove ``.<name>.<host>-<pid>.partial`` files beside ``path`` written on this host by a process that is
    gone (a build killed with -9 leaves one behind); another host's are never touched, whatever their age."""
    path = Path(path)
    host = socket.gethostname()
    for p in path.parent.glob(f".{path.name}.*.partial"):
        owner_host, _, pid = p.name[len(path.name) + 2 : -len(".partial")].rpartition("-")
        try:
            if owner_host == host and pid.isdigit() and not owner_alive(int(pid)) and p.is_file():
                p.unlink()
        except OSError:
            pass


def remove_leftovers(path: str | Path) -> None:
    """Remove what killed writers of ``path`` left beside it (their tmp folders); call only while no other
    writer of ``path`` can be running (under its build lock, or the table lock of a run folder)."""
    path = Path(path)
    if not path.exists():  # killed between moving the old folder aside and the new one in: put the old back
        for old in sorted(path.parent.glob(f".{path.name}.*.replaced"), key=lambda p: p.stat().st_mtime, reverse=True):
            if (old / path.name).exists():
                os.replace(old / path.name, path)
                break
    for p in path.parent.glob(f".{path.name}.*"):
        if p.is_dir() and p.suffix in (".partial", ".replaced"):
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a crash right after it keeps the new name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any, make_parent: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", make_parent)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
