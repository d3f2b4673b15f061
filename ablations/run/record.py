"""The run record: the one module that writes and reads a run folder, so its format lives here only.

    runs/<table>/<variant>/seed-<k>/
        config.json     what made the run: the resolved config, its hash, and provenance
                        (code version, library versions, machine, device)
        params.json     trainable / frozen parameter counts per module
        history.json    loss per epoch (and reward per self-critical epoch)
        weights/        the trained parts (connector + projection as safetensors, LoRA via peft)
        weights-xe/     the same, as they were before the self-critical epochs (runs with scst_epochs only)
        captions.json   captions of the eval split
        attention_maps.json  Q-Former attention of the first eval images (Q-Former runs only; for the report's pictures)
        per_image.csv   per-image scores and probe values
        metrics.json    corpus metrics, slot scores, probes, seconds per stage
        DONE | FAILED   written last, atomically: a folder with neither is a killed run and is redone

The table folder's own files (timing.json, verify.json, references.json.gz, .lock) are table_files.py's;
what a run's settings hash to is identity.py's, where and with what it was made provenance.py's.

The evidence of a report is the same record without weights, gzipped where it pays, committed as
reports/<table>/runs/<variant>/seed-<k>/ (see evidence_files); readers take either form.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from vlm_core.atomic import (LockHeld, atomic_dir, atomic_write, atomic_write_json, exclusive_lock, remove_leftovers,
                              replace_dir, temp_dir)
from vlm_core.errors import UserError

from ablations.run.identity import config_hash, settings_of

DONE, FAILED = "DONE", "FAILED"


def read_gzip(path: Path, limit: int | None = None) -> bytes:
    """A gzipped record file, bounded: a small .gz must not expand without limit."""
    limit = limit or MAX_RECORD_BYTES
    try:
        with gzip.open(regular_file(path)) as fh:
            data = fh.read(limit + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path}: not a readable gzip file ({err})") from err
    if len(data) > limit:
        raise UserError(f"{path}: expands beyond {limit:,} bytes (refused)")
    return data


def regular_file(path: Path) -> Path:
    """``path`` if it is a plain file: a FIFO would hang a reader, a device never end, a link lead elsewhere."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UserError(f"{path}: not a regular file (a link, FIFO or device; refused)")
    return path


def read_bounded(path: Path, limit: int | None = None) -> bytes:
    """A plain record file, refused above the bound before it is read."""
    limit = limit or MAX_RECORD_BYTES
    path = regular_file(path)
    if path.stat().st_size > limit:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes, over the {limit:,}-byte bound of a record file (refused)")
    return path.read_bytes()


def read_folder(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


# The stages of a run, timed by these names in metrics.json "timings" (runner.execute_run writes them).
STAGES = ("train", "generate", "score", "probe")

# Every file a run folder may hold besides its weights (what a worker may send back, what evidence may hold).
RECORD_FILES = ("config.json", "params.json", "history.json", "captions.json", "per_image.csv", "metrics.json",
                "attention_maps.json", DONE, FAILED)
WEIGHT_DIRS = ("weights", "weights-xe")
REQUIRED_DONE = ("config.json", "params.json", "history.json", "captions.json", "per_image.csv", "metrics.json", DONE)
REQUIRED_FAILED = ("config.json", "history.json", FAILED)
GZIPPED = ("captions.json", "per_image.csv", "attention_maps.json")  # the large ones: gzipped in the evidence
MAX_FILE_BYTES = 512 * 2**20  # a bound on any one file a worker or another machine hands us (weights included)
MAX_RECORD_BYTES = 64 * 2**20  # any one record file, decompressed: the largest committed one is 0.2 MB


def child(root: Path, name: str) -> Path:
    """``root / name`` for a name that stays inside root (tables check names when they load; this is the
    last guard before anything is written or removed)."""
    if not name or Path(name).name != name or name.startswith(".") or "\\" in name:
        raise UserError(f"{name!r}: not a usable folder name inside {root} (refused)")
    if (Path(root) / name).is_symlink():  # writing through it would write wherever it points
        raise UserError(f"{Path(root) / name}: a symbolic link (refused; replace it with a folder)")
    return Path(root) / name


def run_path(runs_dir: Path, table: str, variant: str, seed: int) -> Path:
    return cell_path(child(runs_dir, table), variant, seed)


def cell_path(table_dir: Path, variant: str, seed: int) -> Path:
    """One (variant, seed) inside a table's folder: runs/<table>/ locally, reports/<table>/runs/ as evidence."""
    return child(table_dir, variant) / f"seed-{int(seed)}"


# Where things go unless told otherwise (each also a CLI option): local runs, the features and caption-LM
# cache, and the reports with their committed evidence.
RUNS_DIR = Path("runs")
CACHE_DIR = Path(".cache")
REPORTS_DIR = Path("reports")


def evidence_dir(reports_dir: Path, table: str) -> Path:
    return child(reports_dir, table) / "runs"


def check_record_name(name: str, weights: bool = True) -> None:
    """A file name inside a run folder as the format defines it: no other name, no '..', no absolute path."""
    parts = Path(name).parts
    plain = name.removesuffix(".gz")
    record_file = len(parts) == 1 and plain in RECORD_FILES and (name == plain or plain in GZIPPED)
    weight_file = (weights and 2 <= len(parts) <= 3 and parts[0] in WEIGHT_DIRS  # weights/lora/adapter_model...
                   and not any(p.startswith(".") or "\\" in p for p in parts[1:]))
    if Path(name).is_absolute() or not (record_file or weight_file):
        raise UserError(f"{name!r}: not a file of the run-record format (refused)")


# ---- the shape of each JSON file of a record: a function returning what is wrong, or "" (the report
# reads these fields; anything else in them is kept as it is)
def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(d, what: str) -> str:
    if not isinstance(d, dict) or not all(isinstance(k, str) and (is_number(v) or v is None) for k, v in d.items()):
        return f"{what} must map names to numbers"
    return ""


def _metrics_problem(m) -> str:
    if not isinstance(m, dict):
        return "must be a JSON object"
    for key in ("metrics", "timings"):
        if key not in m:
            return f"lacks {key!r}"
    if not (isinstance(m.get("images"), int) and m["images"] > 0):
        return "'images' must be a positive whole number"
    if not isinstance(m.get("probes", {}), dict) or not isinstance(m.get("slots", {}), dict):
        return "'probes' and 'slots' must be JSON objects"
    for key in ("metrics", "timings", "slots", "metrics_xe"):
        problem = _numbers(m.get(key, {}), repr(key))
        if problem:
            return problem
    return _to_score_problem(m["to_score"]) if "to_score" in m else ""


def _to_score_problem(t) -> str:
    """What a run scored later left to do (deferred_scoring): read before anything is scored."""
    text = lambda x: isinstance(x, str)  # noqa: E731
    if not (isinstance(t, dict) and isinstance(t.get("metrics"), list) and all(map(text, t["metrics"]))):
        return "'to_score' must be an object whose 'metrics' lists metric names"
    xe = t.get("captions_xe")
    if xe is not None and not (isinstance(xe, dict) and all(map(text, xe)) and all(map(text, xe.values()))):
        return "'to_score.captions_xe' must map image ids to captions"
    if not (isinstance(t.get("probes", []), list) and all(map(text, t.get("probes", [])))):
        return "'to_score.probes' must list probe names"
    return ""


def _history_problem(h) -> str:
    if not isinstance(h, list) or not all(isinstance(r, dict) for r in h):
        return "must be a list of JSON objects (one per epoch)"
    if any(not (is_number(v) or v is None or isinstance(v, str)) for r in h for v in r.values()):
        return "its values must be numbers (or a phase name)"
    return ""


def _marker_problem(d, field_name: str, ok) -> str:
    return "" if isinstance(d, dict) and ok(d.get(field_name)) else f"must be a JSON object with {field_name!r}"


RECORD_SCHEMAS = {
    "config.json": lambda c: "" if isinstance(c, dict) and isinstance(c.get("seed"), int) else
    "must be a JSON object with an integer 'seed'",
    "params.json": lambda p: "" if isinstance(p, dict) else "must be a JSON object",
    "history.json": _history_problem,
    "metrics.json": _metrics_problem,
    "captions.json": lambda c: "" if isinstance(c, dict) and all(isinstance(v, str) for v in c.values()) else
    "must map image ids to caption strings",
    "attention_maps.json": lambda a: "" if isinstance(a, dict) and all(isinstance(v, list) for v in a.values()) else
    "must map image ids to arrays",
    DONE: lambda d: _marker_problem(d, "seconds", is_number),
    FAILED: lambda d: _marker_problem(d, "reason", lambda r: isinstance(r, str)),
}


class RunRecord:
    """One run folder. Writers are called in the order a run makes its files; readers by the report."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.target: Path | None = None  # while a run is being made: where it goes once finished
        self._lock: contextlib.ExitStack | None = None  # the cell's lock, held from begin() to publishing

    @property
    def weights_dir(self) -> Path:
        return self.path / "weights"

    @property
    def xe_weights_dir(self) -> Path:
        return self.path / "weights-xe"  # the cross-entropy model, before self-critical epochs (if any)

    def is_run_folder(self) -> bool:
        """A finished or failed run record and nothing else (what `--out` may replace): only the format's
        file names, a DONE or FAILED marker, and a config.json whose hash is the hash of its settings. A
        folder holding just a `config.json` (a tool's settings folder) is not one."""
        if not self.path.is_dir() or self.path.is_symlink():
            return False
        try:
            for p in self.path.rglob("*"):
                if p.is_symlink() or not (p.is_file() or p.is_dir()):
                    return False
                if p.is_file():
                    check_record_name(str(p.relative_to(self.path)))
        except UserError:
            return False
        return (self.has(DONE) or self.has(FAILED)) and self.stored_hash_valid()

    # ---- state
    def state(self) -> str:
        """'done', 'failed', 'partial' (a killed run: redone) or 'missing'."""
        if (self.path / DONE).exists():
            return "done"
        if (self.path / FAILED).exists():
            return "failed"
        return "partial" if self.path.exists() else "missing"

    def is_current(self, expected_hash: str) -> bool:
        """Made with the settings the table has now (a run without a stored hash is not)."""
        return self.config_hash() == expected_hash

    def status(self, expected_hash: str) -> str:
        """state(), with a finished run whose settings differ from the table's now as 'stale'."""
        state = self.state()
        return "stale" if state in ("done", "failed") and not self.is_current(expected_hash) else state

    # ---- writers
    def check_target(self) -> None:
        """A folder a run may be written to: new, empty, or a run folder (which the new run replaces). Never
        the working folder or one above it: a finished run takes its target's place by a rename."""
        here, target = Path.cwd().resolve(), self.path.resolve()
        if self.path.name in ("", ".", "..") or target == here or target in here.parents:
            raise UserError(f"{self.path}: is the working folder or one above it; a run needs a folder of its "
                            "own (e.g. runs/my-run)")
        if self.path.exists() and (self.path.is_symlink() or not self.path.is_dir()
                                   or (any(self.path.iterdir()) and not self.is_run_folder())):
            raise UserError(f"{self.path}: exists and is not a run folder (it holds other files, or a record "
                            "without DONE / FAILED); give an empty or new folder")

    def begin(self, config: dict, extra: dict) -> None:
        """Start afresh in a new folder beside the target; the target (an earlier run of this cell, kept
        until this one finishes) is replaced only by finish() or fail(), so a killed redo loses nothing.
        A target that exists but is not a run folder is refused: it is never emptied."""
        self.check_target()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = contextlib.ExitStack()
        try:  # the writer of this cell holds its lock until it publishes or dies: a second one is refused
            self._lock.enter_context(exclusive_lock(self.path, "this run"))
        except LockHeld as err:
            raise UserError(str(err)) from err
        try:
            remove_leftovers(self.path)  # only a dead writer's folder can be there now: we hold the cell's lock
            self.target = self.path
            self.path = temp_dir(self.target, ".partial")
            self._write_json("config.json", {**config, "config_hash": config_hash(config), **extra})
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the cell's lock (after publishing, or when the run stopped without a result)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()

    def _write_json(self, name: str, obj) -> None:
        atomic_write_json(self.path / name, obj, make_parent=False)  # a removed work folder is never re-created

    def missing_files(self) -> list[str]:
        """The files a finished (DONE) or failed (FAILED) record must have that this folder lacks."""
        needed = REQUIRED_DONE if self.has(DONE) else REQUIRED_FAILED if self.has(FAILED) else (DONE,)
        missing = [name for name in needed if not self.has(name)]
        if "config.json" not in missing and not self.stored_hash_valid():
            missing.append("a config.json whose hash is that of its settings")
        return missing

    def _publish(self) -> None:
        """The finished run takes the target's place (the old record goes only once the new one is there),
        and only if it is complete: an incomplete folder never replaces anything."""
        if self.target is None:
            return
        missing = self.missing_files()
        if missing:
            raise UserError(f"{self.target}: the new record lacks {', '.join(missing)}; not published (the "
                            "previous record, if any, is kept)")
        work, self.path, self.target = self.path, self.target, None
        replace_dir(work, self.path)
        self.release()

    def write_params(self, params: dict) -> None:
        self._write_json("params.json", params)

    def write_history(self, history: list[dict]) -> None:
        self._write_json("history.json", history)

    def fail(self, reason: str, history: list[dict], variant: str, seed: int, seconds: float) -> None:
        self.write_history(history)
        self._write_json(FAILED, {"reason": reason, "variant": variant, "seed": seed,
                                               "seconds": round(seconds, 2)})
        self._publish()

    def write_captions(self, captions: dict[str, str]) -> None:
        self._write_json("captions.json", captions)

    def write_attention_maps(self, maps: dict) -> None:
        """Q-Former cross-attention [layers, queries, patches] of a few eval images, rounded (for pictures only)."""
        self._write_json("attention_maps.json",
                          {k: np.round(np.asarray(v, dtype=np.float64), 6).tolist() for k, v in maps.items()})

    def read_files(self) -> dict[str, bytes]:
        """Every file of the folder, by relative path (what a Ray task sends back)."""
        return read_folder(self.path)

    def write_files(self, files: dict[str, bytes], weights: bool = True) -> None:
        """A run made elsewhere (a Ray worker's scratch folder, another machine's evidence): each file checked
        against the record format and a size bound, written into a new folder that replaces this one only
        once complete (DONE / FAILED last), so a failure half-way keeps the old record."""
        for name, data in files.items():
            check_record_name(name, weights)
            if len(data) > MAX_FILE_BYTES:
                raise UserError(f"{name}: {len(data):,} bytes, over the {MAX_FILE_BYTES:,}-byte bound of a run file")
        markers = [name for name in (DONE, FAILED) if name in files]

        def fill(tmp: Path) -> None:
            for name in sorted(set(files) - set(markers)) + markers:
                atomic_write(tmp / name, lambda p, data=files[name]: p.write_bytes(data))

        atomic_dir(self.path, fill)

    def evidence_files(self) -> dict[str, bytes]:
        """The record without weights, the large files gzipped (the same bytes on every machine: mtime 0)."""
        out = {}
        for name in RECORD_FILES:
            if self.has(name):
                data = self._bytes(name)
                out[name + ".gz" if name in GZIPPED else name] = (gzip.compress(data, 9, mtime=0) if name in GZIPPED
                                                                 else data)
        return out

    def finish(self, per_image: pd.DataFrame, metrics: dict) -> None:
        atomic_write(self.path / "per_image.csv", lambda p: per_image.to_csv(p), make_parent=False)
        self._write_json("metrics.json", metrics)
        self._write_json(DONE, {"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "finished_unix": round(time.time(), 3),
                                             "seconds": round(sum(metrics["timings"].values()), 2)})
        self._publish()

    # ---- readers (a file may be stored gzipped, as in the evidence)
    def _bytes(self, name: str) -> bytes:
        plain = self.path / name
        if plain.exists() or plain.is_symlink():
            return read_bounded(plain)
        return read_gzip(self.path / (name + ".gz"))

    def has(self, name: str) -> bool:
        return (self.path / name).exists() or (self.path / (name + ".gz")).exists()

    def _json(self, name: str):
        try:
            return json.loads(self._bytes(name))
        except (ValueError, OSError, EOFError, RecursionError) as err:
            raise UserError(f"{self.path / name}: not a readable JSON record file ({err})") from err

    def config(self) -> dict:
        return self._json("config.json") if self.has("config.json") else {}

    def config_hash(self) -> str | None:
        return self.config().get("config_hash")

    def provenance(self) -> dict:
        return self.config().get("provenance", {})

    def metrics(self) -> dict:
        return self._json("metrics.json")

    def params(self) -> dict:
        return self._json("params.json")

    def finished(self) -> tuple[float, float] | None:
        """When the run finished (seconds since the epoch) and how long it took; None for a run that never
        finished. Records from before ``finished_unix`` hold only the writer's local time, read in this
        machine's time zone (the runs committed so far were all written in UTC)."""
        if not self.has(DONE):
            return None
        done = self._json(DONE)
        when = done.get("finished_unix") or time.mktime(time.strptime(done["finished"], "%Y-%m-%d %H:%M:%S"))
        return when, float(done["seconds"])

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self._json("history.json"))

    def captions(self) -> dict[str, str]:
        return self._json("captions.json")

    def per_image(self) -> pd.DataFrame:
        try:
            return pd.read_csv(io.BytesIO(self._bytes("per_image.csv")), index_col=0)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise UserError(f"{self.path / 'per_image.csv'}: not a readable CSV ({err})") from err

    def check_content(self) -> None:
        """Every file of a finished or failed record parses as the format says, and the corpus CIDEr is the
        mean of its per-image values: what the report reads can be trusted to be of the right shape, and a
        metric edited by hand is caught. One line naming the file and what is wrong."""
        for name in (REQUIRED_DONE if self.has(DONE) else REQUIRED_FAILED):
            if not self.has(name):
                raise UserError(f"{self.path}: a finished record without {name} (refused)")
        for name, schema in RECORD_SCHEMAS.items():
            if self.has(name):
                problem = schema(self._json(name))
                if problem:
                    raise UserError(f"{self.path / name}: {problem}")
        if not self.has(DONE):
            return
        frame = self.per_image()
        bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad or not frame.index.is_unique:
            raise UserError(f"{self.path / 'per_image.csv'}: " + (f"column {bad[0]!r} is not numeric" if bad
                                                                    else "an image appears twice"))
        metrics = self.metrics()
        if metrics["images"] != len(frame) or set(map(str, frame.index)) != set(self.captions()):
            raise UserError(f"{self.path}: metrics.json, per_image.csv and captions.json do not name the same "
                            f"{metrics['images']} images")
        if "CIDEr" in frame and "CIDEr" in metrics["metrics"]:
            mean = float(frame["CIDEr"].mean())
            if not np.isclose(mean, metrics["metrics"]["CIDEr"], rtol=1e-6, atol=1e-9):
                raise UserError(f"{self.path / 'metrics.json'}: CIDEr {metrics['metrics']['CIDEr']:.6g} is not the "
                                f"mean of its per-image values ({mean:.6g}; edited?)")

    def attention_maps(self) -> dict[str, np.ndarray]:
        if not self.has("attention_maps.json"):
            return {}
        return {k: np.asarray(v) for k, v in self._json("attention_maps.json").items()}

    def has_weights(self) -> bool:
        return (self.weights_dir / "model_config.json").exists()

    def result_digest(self) -> str:
        """What a run found (captions, metrics, probes, per-image values; not its timings or provenance):
        two records of one cell with equal digests are the same result."""
        m = self.metrics() if self.has("metrics.json") else self.failure()
        # metrics_xe left out: a record made before runs scored their cross-entropy model is the same result;
        # ran_on (the host of each stage): a run scored later, elsewhere, is the same result as one scored in place
        m = {k: v for k, v in m.items() if k not in ("timings", "seconds", "metrics_xe", "ran_on")}
        h = hashlib.sha256(json.dumps(m, sort_keys=True, default=str).encode())
        for name in ("captions.json", "per_image.csv"):
            if self.has(name):
                h.update(self._bytes(name))
        return h.hexdigest()[:16]

    def check_incoming(self, seed: int) -> None:
        """A record from elsewhere is data, not trust: only the format's file names, no links, bounded sizes,
        a stored hash that is the hash of its stored settings, and the cell it claims to be."""
        if self.path.is_symlink():
            raise UserError(f"{self.path}: a symbolic link, not a run folder (refused)")
        for p in sorted(self.path.rglob("*")):
            name = str(p.relative_to(self.path))
            if p.is_symlink():
                raise UserError(f"{p}: a symbolic link inside a run record (refused)")
            if p.is_file():
                check_record_name(name)
                weights = Path(name).parts[0] in WEIGHT_DIRS
                if p.stat().st_size > (MAX_FILE_BYTES if weights else MAX_RECORD_BYTES):
                    raise UserError(f"{p}: over the bound of a run file (refused)")
            elif not p.is_dir():
                raise UserError(f"{p}: not a regular file (a FIFO, socket or device; refused)")
        self.check_content()
        config = self.config()
        if not self.stored_hash_valid():
            raise UserError(f"{self.path / 'config.json'}: its config_hash is not the hash of its settings "
                            "(edited or copied from another run; refused)")
        if config.get("seed") != seed:  # (variant names are not part of a run's identity: a renamed row keeps its runs)
            raise UserError(f"{self.path / 'config.json'}: records seed {config.get('seed')}, not seed {seed} "
                            f"as its folder says (refused)")

    def stored_hash_valid(self) -> bool:
        """The stored hash is the hash of the stored settings (a hash copied onto other settings is not)."""
        try:
            config = self.config()
            return (isinstance(config, dict) and bool(config)
                    and config_hash(settings_of(config)) == config.get("config_hash"))
        except (TypeError, ValueError, AttributeError, UserError):
            return False  # a malformed config is not valid evidence (check_incoming refuses it)

    def failure(self) -> dict:
        return self._json(FAILED)
