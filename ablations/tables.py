"""Control tables as TOML data: a table names data, backbones, settings, seeds and variants.

A variant is a row of overrides (``model.*``, ``train.*``) on the table's defaults, never a code
branch; ``[[sweep]]`` entries expand a key over values into more rows. Every mistake is a
UserError naming the file and the key.
"""
from __future__ import annotations

import copy
import math
import os
import re
import stat
import tomllib
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from vlm_core.caption_files import AUTO, FORMATS, SplitFiles, default_label
from vlm_core.configs import CAPTION_LM, CaptionLMConfig, CaptionModelConfig, TrainConfig
from vlm_core.device import AUTO_DEVICE, DEFAULT_PRECISION, check_precision
from vlm_core.errors import UserError
from vlm_core.shapes import MAX_IMAGES, MIN_IMAGE_SIZE, ShapesConfig

from ablations.decide import expectations as expect_rules
from ablations.decide.expectations import EXPECTATIONS, Expectation  # noqa: F401  (EXPECTATIONS: the names and their words)
from ablations.measure.scoring import OPT_IN_METRICS, TARGET_METRICS

TABLES_DIR = Path(__file__).parent / "tables"

# Expected outcomes the report can check: one rule type (expectations.py), the six shipped names among them.
# A [[sweep]] over this key retrains a variant at other training budgets; those rows are compared with the
# reference at the same budget (budgets.py), never with the table's own reference row.
BUDGET_KEY = "train.epochs"

# ``[targets]``: thresholds for the reference variant on the eval split (metric names), and ``minutes`` for the table.
TARGET_KEYS = [*TARGET_METRICS, "minutes"]
DATA_NAMES = ("shapes", "flickr8k")
DEFAULT_REFERENCE = "full"  # table.reference unless set: the variant every other one is compared with
DATA_WITH_SLOT_LABELS = ("shapes",)  # captions that parse into slots (colour, shape, relation); see slots.py
DATA_GENERATED = ("shapes",)  # images the project makes itself: a report may show them (table.show_images default)


@dataclass
class DataSpec:
    """[data]: a named data set (``name``: shapes, flickr8k), or with ``format`` any caption file in a common layout
    (vlm_core/caption_files.py), whose ``name`` is then only its label (default: the file's name)."""

    name: str = "shapes"  # one of DATA_NAMES, or the label of a data set read with `format`
    path: str = "../shared/flickr8k"  # flickr8k (--data-dir or ABLATE_FLICKR8K override it) or the data file of `format`
    eval_split: str = "test"  # captions, scores and probes are computed on this split
    eval_images: int = 0  # 0 = all images of eval_split
    train_images: int = 0  # 0 = all training images
    shapes: ShapesConfig = field(default_factory=ShapesConfig)  # [data.shapes]: the generator's settings
    # Added with the file formats (in a config hash only when set: identity.py).
    format: str = ""  # "" = the named data set; auto (from the file) | karpathy | coco | jsonl | csv | flickr8k
    images: str = ""  # the image root ("" = the data file's folder)
    splits: SplitFiles = field(default_factory=SplitFiles)  # [data.splits]: a file of ids per split
    split_seed: int = 0  # no splits in the file nor data.splits: a seeded random split, with these shares
    dev_share: float = 0.1
    test_share: float = 0.1

    def __post_init__(self):
        if self.format:
            if self.format not in (AUTO, *FORMATS):
                raise UserError(f"data.format: one of {AUTO}, {', '.join(FORMATS)}, not {self.format!r}")
            if self.name == "shapes":  # the default: a file's data set is named after the file
                self.name = default_label(Path(self.path))
            check_name(self.name, "data.name")
        elif self.name not in DATA_NAMES:
            raise UserError(f"data.name: must be one of {', '.join(DATA_NAMES)}, not {self.name!r} (a data file: "
                            "set data.format and data.path)")
        elif (self.images or any(asdict(self.splits).values()) or self.split_seed
              or (self.dev_share, self.test_share) != (0.1, 0.1)):
            raise UserError("data.images, data.splits, data.split_seed, data.dev_share, data.test_share: only with "
                            "data.format (a named data set has its own images and splits)")
        if self.eval_images == 1 or self.eval_images < 0:
            raise UserError("data.eval_images: 0 (all) or at least 2 (the swap probes pair images)")
        if self.dev_share + self.test_share >= 1:
            raise UserError(f"data.dev_share + data.test_share: must be below 1, not "
                            f"{self.dev_share + self.test_share:g}")


SCORE_WHEN = ("auto", "now", "later")  # run.score


@dataclass
class RunSpec:
    """Where and how the runs execute ([run]; each key also a `run-all` option). Only ``precision`` is
    part of the config hash; the device and threads per run are recorded in each run's provenance
    (they can move numbers by floating-point rounding: kernels differ across devices and thread counts)."""

    device: str = AUTO_DEVICE  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps
    precision: str = DEFAULT_PRECISION  # fp32 | bf16 | fp16 (autocast; fp32 measured fastest on these CPUs)
    executor: str = "serial"  # a name of executors.EXECUTORS (serial: one run after another, here)
    cpus_per_run: int = 0  # torch threads per run; 0 = all cores (serial) or 1 (the others)
    gpus_per_run: float = 0.0  # what each run asks an executor that places runs on a cluster for
    track: str = ""  # "mlflow": log each finished run to MLflow (ablations/run/tracking.py); "" = no tracker
    tracking_uri: str = ""  # "" = sqlite:///runs/mlflow.db
    # When the metrics that need Java (pycocoevalcap) are computed: "now" (in the run), "later" (the run records its
    # captions 'to score'; `ablate score` or `ablate report` scores them where Java is), "auto" (later when this
    # machine has no Java: a GPU node never needs it). run.score is not part of the config hash: same numbers.
    score: str = "auto"
    # [run.options.<executor>]: that executor's own keys (executors.EXECUTORS), checked before the runs start.
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        check_precision(self.precision)
        if self.score not in SCORE_WHEN:
            raise UserError(f"run.score: one of {', '.join(SCORE_WHEN)}, not {self.score!r}")
        if self.track not in ("", "mlflow"):
            raise UserError(f"run.track: 'mlflow' or '' (no tracker), not {self.track!r}")
        if self.cpus_per_run < 0 or self.gpus_per_run < 0:
            raise UserError("run.cpus_per_run and run.gpus_per_run must be >= 0")
        if not isinstance(self.options, dict) or not all(isinstance(v, dict) for v in self.options.values()):
            raise UserError("run.options: expected one table per executor ([run.options.<executor>] with its keys)")


@dataclass
class BackboneSpec:
    vision: str = "efficientnet-lite0"
    language: str = CAPTION_LM


@dataclass
class ProbeSpec:
    swap_seed: int = 1234
    spice: bool = False  # the SPICE metric: its switch from before probes.metrics (same as naming it there)
    nll_refs: int = 0  # likelihood swap: use the first N references of each image (0 = all); it is the costliest probe
    # Opt-in metrics to compute as well (scoring.CAPTION_METRICS); in a config hash only when set (identity.py).
    metrics: list[str] = field(default_factory=list)

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in OPT_IN_METRICS]
        if unknown:
            raise UserError(f"probes.metrics: {unknown[0]!r} is not an opt-in metric; known: {', '.join(OPT_IN_METRICS)}")
        # One spelling per setting, so that one setting has one config hash: SPICE keeps its older key, the
        # others are listed once, in registry order.
        self.spice = self.spice or "SPICE" in self.metrics
        self.metrics = [m for m in OPT_IN_METRICS if m in self.metrics and m != "SPICE"]

    @property
    def opt_in_metrics(self) -> list[str]:
        """The opt-in metrics its runs compute."""
        return (["SPICE"] if self.spice else []) + self.metrics


@dataclass
class Variant:
    name: str
    model: CaptionModelConfig
    train: TrainConfig
    expectations: list[Expectation] = field(default_factory=list)  # what the row claims (expectations.py)
    expected: str = ""
    description: str = ""
    # A [[sweep]] row: the variant it varies, the key and this row's value (not part of the config hash).
    sweep_of: str = ""
    sweep_key: str = ""
    sweep_value: Any = None
    seeds: list[int] = field(default_factory=list)  # the table's seeds unless the row lists its own

    @property
    def is_budget_row(self) -> bool:
        return self.sweep_key == BUDGET_KEY

    @property
    def expect(self) -> list[str]:
        """The expectations' names (a shipped name, or the label of one written in the table)."""
        return [e.name for e in self.expectations]


@dataclass
class Table:
    name: str
    path: Path
    description: str
    seeds: list[int]
    data: DataSpec
    backbones: BackboneSpec
    caption_lm: CaptionLMConfig
    probes: ProbeSpec
    variants: dict[str, Variant]
    run: RunSpec = field(default_factory=RunSpec)
    reference: str = DEFAULT_REFERENCE  # the variant every other one is compared with
    notes: str = ""
    requires: str = ""  # e.g. "hub+gpu": printed when a run cannot start
    targets: dict[str, float] = field(default_factory=dict)  # see TARGET_KEYS; the report says met or not
    # Whether the report may show the data's images (gallery thumbnails, attention maps): by default only
    # images the project generates (DATA_GENERATED); photos (Flickr8k) are not ours to republish.
    show_images: bool = False

    @property
    def all_seeds(self) -> list[int]:
        """Every seed some variant runs (a variant may list more seeds than the table, e.g. the main comparison)."""
        return sorted({s for v in self.variants.values() for s in v.seeds})

    def select(self, only: list[str] | None) -> list[Variant]:
        if not only:
            return list(self.variants.values())
        unknown = [v for v in only if v not in self.variants]
        if unknown:
            raise UserError(f"{self.path}: unknown variant(s) in --only: {', '.join(unknown)}; "
                            f"known: {', '.join(self.variants)}")
        return [self.variants[v] for v in only]


SEEDS = (0, 2**32 - 1)  # what numpy and torch take as a seed

# The range of every number a table (or --set, or a stored run's config.json) may give, inclusive: generous, but a
# typo such as num_queries = 9999999999 (a 1.28 TB tensor) or train = 10000000000 images is refused before any work.
LIMITS: dict[type, dict[str, tuple[float, float]]] = {
    DataSpec: {"eval_images": (0, MAX_IMAGES), "train_images": (0, MAX_IMAGES), "split_seed": SEEDS,
               "dev_share": (0.0, 1.0), "test_share": (0.0, 1.0)},
    ShapesConfig: {"seed": SEEDS, "train": (1, MAX_IMAGES), "dev": (1, MAX_IMAGES), "test": (1, MAX_IMAGES),
                   "two_object_share": (0.0, 1.0), "image_size": (MIN_IMAGE_SIZE, 2048)},
    RunSpec: {"cpus_per_run": (0, 4096), "gpus_per_run": (0.0, 1024.0)},
    ProbeSpec: {"swap_seed": SEEDS, "nll_refs": (0, 1000)},
    CaptionLMConfig: {"vocab_size": (1, 1_000_000), "n_layer": (1, 64), "n_embd": (1, 8192), "n_head": (1, 256),
                      "n_positions": (1, 8192), "epochs": (0, 1000), "batch_size": (1, 65536), "lr": (0.0, 10.0),
                      "max_tokens": (1, 8192), "pack_length": (0, 8192), "seed": SEEDS},
    CaptionModelConfig: {"num_queries": (1, 1024), "qformer_hidden": (1, 8192), "qformer_layers": (1, 64),
                         "qformer_heads": (1, 256), "qformer_intermediate": (1, 32768),
                         "qformer_cross_attention_frequency": (1, 64), "qformer_dropout": (0.0, 1.0),
                         "qformer_init_std": (0.0, 10.0), "lora_rank": (0, 4096), "lora_alpha": (0, 1_000_000),
                         "lora_dropout": (0.0, 1.0), "max_caption_tokens": (1, 8192), "seed_pad_length": (1, 8192)},
    TrainConfig: {"epochs": (1, 1000), "batch_size": (1, 65536), "lr": (0.0, 10.0), "connector_lr": (0.0, 10.0),
                  "weight_decay": (0.0, 10.0), "warmup_share": (0.0, 1.0), "captions_per_image": (1, 100),
                  "grad_clip": (0.0, 1e6), "dev_images": (0, MAX_IMAGES), "dev_checks": (0, 1000),
                  "explode_factor": (0.0, 1e12), "max_new_tokens": (1, 1024), "num_beams": (1, 64),
                  "no_repeat_ngram_size": (0, 1024), "length_penalty": (-100.0, 100.0), "rerank_samples": (0, 256),
                  "rerank_temperature": (0.0, 100.0), "label_smoothing": (0.0, 1.0), "scst_epochs": (0, 1000),
                  "scst_samples": (1, 256), "scst_images": (0, MAX_IMAGES), "scst_lr": (0.0, 10.0), "generate_batch_size": (1, 65536),
                  "debug_nan_at_step": (0, 2**31 - 1)},
}
# (part, whole): attention splits the width into equal heads.
DIVIDES: dict[type, list[tuple[str, str]]] = {
    CaptionModelConfig: [("qformer_heads", "qformer_hidden")],
    CaptionLMConfig: [("n_head", "n_embd")],
}


def _number(value: float) -> str:
    return f"{value:_}" if isinstance(value, int) and abs(value) >= 10_000 else f"{value:g}"


def check_seed(seed: int, where: str) -> None:
    if not SEEDS[0] <= seed <= SEEDS[1]:
        raise UserError(f"{where}: must be in [{SEEDS[0]}, {_number(SEEDS[1])}], not {_number(seed)}")


def check_range(cls, key: str, value: Any, where: str) -> None:
    """A value given outside a table (a CLI option) against the bounds its table key has."""
    _check_range(cls, key, value, where)


def _check_range(cls, key: str, value: Any, where: str) -> None:
    lo, hi = LIMITS.get(cls, {}).get(key, (None, None))
    if lo is not None and not lo <= value <= hi:
        raise UserError(f"{where}: must be in [{_number(lo)}, {_number(hi)}], not {_number(value)}")


def _check_type(value: Any, default: Any, where: str, item: type | None = None) -> Any:
    """``item``: the element type of a list (from the field's annotation, e.g. list[str])."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, not {value!r}")
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
        if ok and item is not None and not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise UserError(f"{where}: expected a list of {item.__name__}, got {value!r}")
    elif is_dataclass(default):  # a sub-table, e.g. [data.shapes]
        return _build(type(default), value, where, base=asdict(default))[0]
    else:
        ok = True
    if not ok:
        raise UserError(f"{where}: expected {type(default).__name__}, got {type(value).__name__} ({value!r})")
    return value


def _list_items(cls) -> dict[str, type]:
    """The element type of each list field of ``cls`` (its annotation), checked like any other type."""
    out = {}
    for key, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        if typing.get_origin(hint) is list and len(args) == 1 and isinstance(args[0], type):
            out[key] = args[0]
    return out


def _defaults(cls) -> dict[str, Any]:
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def _build(cls, raw: Any, where: str, base: dict | None = None):
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table of keys, got {type(raw).__name__}")
    defaults = _defaults(cls)
    values = dict(base if base is not None else defaults)
    for key, value in values.items():  # sub-tables given as plain data (a stored base) become dataclasses again
        if is_dataclass(defaults[key]) and isinstance(value, dict):
            values[key] = type(defaults[key])(**value)
    items = _list_items(cls)
    for key, value in raw.items():
        if key not in defaults:
            raise UserError(f"{where}: unknown key '{key}'; known: {', '.join(defaults)}")
        values[key] = _check_type(value, defaults[key], f"{where}.{key}", items.get(key))
        _check_range(cls, key, values[key], f"{where}.{key}")
    for part, whole in DIVIDES.get(cls, []):
        if values[whole] % values[part]:
            raise UserError(f"{where}.{part}: {values[part]} does not divide {whole} ({values[whole]}); attention "
                            "splits the width into equal heads")
    try:
        return cls(**values), values
    except UserError as err:
        raise UserError(f"{where}: {err}") from err


def checked_section(cls, raw: Any, where: str):
    """``raw`` (e.g. a stored run's ``model`` settings) as a ``cls``, each key checked as in a table."""
    return _build(cls, raw, where)[0]


TOP_KEYS = {"include", "table", "data", "backbones", "caption_lm", "model", "train", "probes", "variants", "sweep", "targets", "run"}
# [table] and variant-row keys with the type each takes (None: checked where it is read)
TABLE_KEYS = {"name": "", "description": "", "seeds": None, "notes": "", "requires": "", "reference": "",
              "show_images": False}
VARIANT_KEYS = {"model": None, "train": None, "expect": None, "expected": "", "description": "", "seeds": None}


def resolve_table_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise UserError(f"{p}: table file not found")
        return p
    shipped = TABLES_DIR / f"{name_or_path}.toml"
    if not shipped.exists():
        raise UserError(f"unknown table '{name_or_path}'; shipped tables: {', '.join(shipped_tables())}")
    return shipped


def shipped_tables() -> list[str]:
    return sorted(p.stem for p in TABLES_DIR.glob("*.toml"))


# Table, variant and sweep-row names become folder names (runs/<table>/<variant>/, reports/<table>/):
# letters, digits, '.', '_', '-' and '+', not starting with a dot, so that no name can leave its folder.
SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}")


def check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise UserError(f"{where}: {name!r} is not a usable name (it becomes a folder name: letters, digits, "
                        "'.', '_', '-', '+', at most 100, not starting with a dot)")
    return name


# A table file is a few KB (the shipped ones: under 4 KB, nested at most 4 levels). Both bounds are checked before
# tomllib parses: it takes quadratic time and memory in the parts of a dotted key (100,000 parts: 74 s and 9.3 GB),
# and a table 2,000 levels deep overflows the recursion of merging and copying.
MAX_TABLE_BYTES = 1 << 20
MAX_NESTING = 32
MAX_INCLUDES = 16
_TOKEN = re.compile("|".join([
    r'(?P<string>"{3}(?:[^"\\]|\\[\s\S]|"(?!""))*+(?:"{3,5}|\\?\Z)',  # an unterminated string runs to the end of its
    r"'{3}(?:[^']|'(?!''))*+(?:'{3,5}|\Z)",  # line (or file), where tomllib refuses it anyway
    r'"(?:[^"\\\n]|\\.)*+(?:"|\\?(?=\n|\Z))',
    r"'[^'\n]*+(?:'|(?=\n|\Z)))",
    r"(?P<comment>#[^\n]*)", r"(?P<newline>\n)", r"(?P<punct>[][{}=,.])", r"(?P<space>[ \t\r]+)",
    r"""(?P<word>[^][{}=,.\s"'#]+|.)""",
]))


def check_nesting(text: str, where: str, lines: bool = True) -> None:
    """Refuses a key, a [header] or nested arrays / inline tables deeper than MAX_NESTING, by one pass over the
    tokens of ``text`` (strings and comments skipped), before a parser spends minutes or its stack on it;
    ``lines``: name the line."""
    containers: list[str] = []  # open '[' (array) and '{' (inline table) of the current value
    mode, parts, line_start = "key", 1, True  # mode: "key", "header" or "value"
    for m in _TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind in ("space", "comment"):
            continue
        if kind == "newline":
            if not containers:
                mode, parts, line_start = "key", 1, True
            continue
        deep = ""
        if mode in ("key", "header") and tok == ".":
            parts += 1
            if parts > MAX_NESTING:
                deep = f"a key or header of more than {MAX_NESTING} parts"
        elif mode == "key" and tok == "[" and line_start and not containers:
            mode = "header"
        elif mode == "header" and tok == "]":
            mode = "key"
        elif mode == "key" and tok == "=":
            mode, parts = "value", 1
        elif mode == "value" and tok in "[{" and kind == "punct":
            containers.append(tok)
            if len(containers) > MAX_NESTING:
                deep = f"arrays or inline tables more than {MAX_NESTING} levels deep"
            mode = "key" if tok == "{" else "value"
        elif tok in "]}" and kind == "punct" and containers:
            containers.pop()
            mode = "value"
        elif tok == "," and containers and containers[-1] == "{":
            mode, parts = "key", 1
        line_start = False
        if deep:
            line = f"line {text.count(chr(10), 0, m.start()) + 1}: " if lines else ""
            raise UserError(f"{where}: {line}nested too deeply: {deep} (a table needs a few)")


def _read_toml(path: Path) -> dict:
    """A table file, refused as one line when it is no regular file (/dev/zero, a pipe), over MAX_TABLE_BYTES or
    nested deeper than MAX_NESTING."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a pipe must not block before it is refused
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError(f"{path}: not a regular file")
            data = f.read(MAX_TABLE_BYTES + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from err
    if len(data) > MAX_TABLE_BYTES:
        raise UserError(f"{path}: larger than {MAX_TABLE_BYTES:_} bytes (1 MiB); a table is a few KB")
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text read it
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8") from err
    check_nesting(text, str(path))
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: TOML syntax error: {err}") from err
    except RecursionError as err:
        raise UserError(f"{path}: nested too deeply to be a table") from err


def merged(base: dict, over: dict) -> dict:
    """``over`` laid on ``base``: tables merge key by key, any other value replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _with_includes(raw: dict, path: Path) -> dict:
    """``include = "common/control-variants.toml"`` (or a list): those files' keys first, the table's own
    merged over them, so that the shared variant rows live in one file. Paths are relative to the table."""
    names = raw.pop("include", [])
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: include: expected a file name or a list of them")
    if len(names) > MAX_INCLUDES:
        raise UserError(f"{path}: include: at most {MAX_INCLUDES} files, not {len(names)}")
    base: dict = {}
    if names:
        raw["include"] = names  # kept only for the error messages of load_table
    for name in names:
        part_path = path.parent / name
        part = _read_toml(part_path)
        if "include" in part:
            raise UserError(f"{part_path}: include: an included file cannot include others (one level keeps "
                            "every setting two files away at most)")
        base = merged(base, part)
    return merged(base, raw)


def load_table(name_or_path: str) -> Table:
    path = resolve_table_path(name_or_path)
    raw = _with_includes(_read_toml(path), path)
    included = raw.pop("include", [])
    where = f"{path} (with {', '.join(included)})" if included else str(path)
    for key in raw:
        if key not in TOP_KEYS:
            raise UserError(f"{where}: unknown key '{key}'; known: {', '.join(sorted(TOP_KEYS))}")
    head = raw.get("table", {})
    if not isinstance(head, dict):
        raise UserError(f"{where}: table: expected a table of keys ([table]), got {type(head).__name__}")
    for key in head:
        if key not in TABLE_KEYS:
            raise UserError(f"{where}: unknown key 'table.{key}'; known: {', '.join(sorted(TABLE_KEYS))}")
        if TABLE_KEYS[key] is not None:
            _check_type(head[key], TABLE_KEYS[key], f"{where}: table.{key}")
    seeds = _seeds(head.get("seeds", [0]), f"{where}: table.seeds")
    data, _ = _build(DataSpec, raw.get("data", {}), f"{where}: data")
    backbones, _ = _build(BackboneSpec, raw.get("backbones", {}), f"{where}: backbones")
    caption_lm, _ = _build(CaptionLMConfig, raw.get("caption_lm", {}), f"{where}: caption_lm")
    probes, _ = _build(ProbeSpec, raw.get("probes", {}), f"{where}: probes")
    run, _ = _build(RunSpec, raw.get("run", {}), f"{where}: run")
    _, model_base = _build(CaptionModelConfig, raw.get("model", {}), f"{where}: model")
    _, train_base = _build(TrainConfig, raw.get("train", {}), f"{where}: train")

    targets = raw.get("targets", {})
    if not isinstance(targets, dict):
        raise UserError(f"{where}: targets: expected a table of keys")
    for key, value in targets.items():
        if key not in TARGET_KEYS:
            raise UserError(f"{where}: unknown key 'targets.{key}'; known: {', '.join(TARGET_KEYS)}")
        _check_type(value, 0.0, f"{where}: targets.{key}")
    rows = raw.get("variants")
    if not isinstance(rows, dict) or not rows:
        raise UserError(f"{where}: no [variants.*] rows")
    variants: dict[str, Variant] = {}
    for vname, row in rows.items():
        check_name(vname, f"{where}: variants")
        variants[vname] = _variant(vname, row, model_base, train_base, seeds, f"{where}: variants.{vname}")
    reference = head.get("reference", DEFAULT_REFERENCE)
    if reference not in variants:
        raise UserError(f"{where}: table.reference: no variant {reference!r} (variants: {', '.join(variants)}); "
                        "name the variant every other one is compared with")
    sweeps = raw.get("sweep", [])
    if not isinstance(sweeps, list):
        raise UserError(f"{where}: sweep: expected [[sweep]] entries, got {type(sweeps).__name__}")
    for i, sweep in enumerate(sweeps):
        _expand_sweep(sweep, variants, rows, model_base, train_base, seeds, f"{where}: sweep[{i}]", reference)
    for v in variants.values():
        slots = expect_rules.needs_slots(v.expectations)
        if slots and data.name not in DATA_WITH_SLOT_LABELS:
            raise UserError(f"{where}: variants.{v.name}.expect: {', '.join(slots)} needs "
                            "slot labels, which only the shapes data has")
        expect_rules.check_against_table(v.expectations, v.name, list(variants), f"{where}: variants.{v.name}.expect")
    return Table(
        name=check_name(head.get("name", path.stem), f"{where}: table.name"), path=path, description=str(head.get("description", "")),
        seeds=list(seeds), data=data, backbones=backbones, caption_lm=caption_lm, probes=probes,
        variants=variants, run=run, reference=reference, notes=str(head.get("notes", "")),
        requires=str(head.get("requires", "")), targets={k: float(v) for k, v in targets.items()},
        show_images=_check_type(head.get("show_images", data.name in DATA_GENERATED), False, f"{where}: table.show_images"),
    )


def _variant(vname: str, row: Any, model_base: dict, train_base: dict, table_seeds: list[int], where: str) -> Variant:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a table of keys")
    for key in row:
        if key not in VARIANT_KEYS:
            raise UserError(f"{where}: unknown key '{key}'; known: {', '.join(sorted(VARIANT_KEYS))}")
        if VARIANT_KEYS[key] is not None:
            _check_type(row[key], VARIANT_KEYS[key], f"{where}.{key}")
    model, _ = _build(CaptionModelConfig, row.get("model", {}), f"{where}.model", copy.deepcopy(model_base))
    train, _ = _build(TrainConfig, row.get("train", {}), f"{where}.train", copy.deepcopy(train_base))
    expect = expect_rules.parse(row.get("expect", []), f"{where}.expect")
    expected = row.get("expected", "; ".join(e.words for e in expect) or "nothing checked")
    seeds = _seeds(row.get("seeds", table_seeds), f"{where}.seeds")
    return Variant(vname, model, train, expect, str(expected), str(row.get("description", "")), seeds=seeds)


def _seeds(seeds: Any, where: str) -> list[int]:
    lo, hi = SEEDS
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and lo <= s <= hi for s in seeds)
            or len(set(seeds)) != len(seeds)):
        raise UserError(f"{where}: expected a non-empty list of distinct integers in [{lo}, {_number(hi)}], not "
                        f"{seeds!r}")
    return list(seeds)


def _expand_sweep(sweep: Any, variants: dict, rows: dict, model_base: dict, train_base: dict, table_seeds: list[int],
                  where: str, reference: str) -> None:
    """``{base = "full", key = "model.num_queries", values = [8, 32]}`` -> rows full-num_queries-8, ...
    (``base`` defaults to the table's reference variant)."""
    if not isinstance(sweep, dict) or set(sweep) - {"base", "key", "values", "expect"} or "key" not in sweep:
        raise UserError(f"{where}: a sweep needs 'key' and 'values' (and optional 'base', 'expect')")
    base = sweep.get("base", reference)
    if not isinstance(base, str) or base not in rows:
        raise UserError(f"{where}.base: unknown variant {base!r}")
    section, _, key = str(sweep["key"]).partition(".")
    if section not in ("model", "train") or not key:
        raise UserError(f"{where}.key: must look like 'model.<key>' or 'train.<key>', not {sweep['key']!r}")
    values = sweep.get("values")
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}.values: expected a non-empty list")
    for value in values:
        row = copy.deepcopy(rows[base])
        row.setdefault(section, {})[key] = value
        row["expect"] = sweep.get("expect", [])
        row.pop("expected", None)
        name = check_name(f"{base}-{key}-{value}", f"{where}: the row name of value {value!r}")
        if name in variants:
            raise UserError(f"{where}: row {name!r} is defined twice")
        new = _variant(name, row, model_base, train_base, table_seeds, f"{where} ({name})")
        if getattr(getattr(new, section), key) == getattr(getattr(variants[base], section), key):
            raise UserError(f"{where}.values: {value!r} is what {base!r} already has ({sweep['key']}); the row "
                            "would repeat it")
        if sweep["key"] == BUDGET_KEY and new.expect:
            raise UserError(f"{where}.expect: rows of a {BUDGET_KEY} sweep are compared with the reference at their "
                            "own budget in the budget section; they take no expectations")
        new.sweep_of, new.sweep_key, new.sweep_value = base, sweep["key"], value
        variants[name] = new


def variant_config(table: Table, variant: Variant) -> dict:
    """Everything that determines a run's result, as plain data (stored with the run; its hash
    decides whether a finished run is still current). Descriptions and expectations are not part of it."""
    return {
        "table": table.name, "variant": variant.name, "data": asdict(table.data),
        "backbones": asdict(table.backbones), "caption_lm": asdict(table.caption_lm),
        "model": asdict(variant.model), "train": asdict(variant.train), "probes": asdict(table.probes),
        "precision": table.run.precision,
    }


def toml_value(text: str, where: str) -> Any:
    """A command-line value as TOML (``3``, ``1e-3``, ``true``, ``["a"]``), anything else as a string; bounded
    like a table (length, nesting)."""
    if len(text) > MAX_TABLE_BYTES:
        raise UserError(f"{where}: the value is longer than {MAX_TABLE_BYTES:_} characters")
    check_nesting(f"v = {text.strip()}", where, lines=False)
    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()
    except RecursionError as err:
        raise UserError(f"{where}: the value is nested too deeply") from err


def apply_settings(table: Table, variant: Variant | None, settings: list[str]) -> None:
    """One-off ``section.key=value`` overrides (``--set`` of `ablate train`, and the `run-all` options
    for ``run``), checked like table keys.

    ``model``/``train`` change the variant; ``data``/``backbones``/``caption_lm``/``probes``/``run`` the table. Values are
    TOML (``3``, ``1e-3``, ``true``, ``["c_attn", "lm_head"]``); anything else is taken as a string."""
    owners = {"model": variant, "train": variant, "data": table, "backbones": table, "caption_lm": table,
              "probes": table, "run": table}
    for setting in settings:
        name, sep, text = setting.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or section not in owners or owners[section] is None:
            raise UserError(f"--set {setting[:200]!r}: expected SECTION.KEY=VALUE with SECTION one of "
                            f"{', '.join(owners)}")
        value = toml_value(text, f"--set {name.strip()}")
        current = getattr(owners[section], section)
        updated, _ = _build(type(current), {key: value}, f"--set {section}", base=asdict(current))
        setattr(owners[section], section, updated)
