"""Control tables as TOML data: a table names data, backbones, settings, seeds and variants.

A variant is a row of overrides (``model.*``, ``train.*``) on the table's defaults, never a code
branch; ``[[sweep]]`` entries expand a key over values into more rows. Every mistake is a
UserError naming the file and the key.
"""
from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from vlm_core.caption_lm import CAPTION_LM, CaptionLMConfig
from vlm_core.device import AUTO_DEVICE, DEFAULT_PRECISION, check_precision
from vlm_core.errors import UserError
from vlm_core.model import CaptionModelConfig
from vlm_core.shapes import ShapesConfig
from vlm_core.train import TrainConfig

TABLES_DIR = Path(__file__).parent / "tables"

# Expected outcomes the report can check; each is tested by the rule of the same name in
# analysis.py, at the level of training runs (seeds). A variant may list several.
EXPECTATIONS = {
    "image_dependent": "captions depend on the image (generation-swap rate >= 0.9 and likelihood gap > 0, over seeds)",
    "worse_than_reference": "CIDEr below the reference variant (seed-level 95% CI of the difference below 0)",
    "loses_relations": "relation slot below the reference variant (seed-level 95% CI below 0; shapes only)",
    "uses_image_less": "uses the image less than the reference (likelihood-swap gap lower, seed-level 95% CI)",
    "floor": "language prior only: swap rate near 0 and CIDEr below every other working variant (seed-level CIs)",
    "collapsed": "degenerate: >= 90% empty captions (over seeds)",
}
NEEDS_SLOTS = {"loses_relations"}
# A [[sweep]] over this key retrains a variant at other training budgets; those rows are compared with the
# reference at the same budget (budgets.py), never with the table's own reference row.
BUDGET_KEY = "train.epochs"

# ``[targets]``: thresholds for the reference variant on the eval split (metric names), and ``minutes`` for the table.
TARGET_KEYS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "minutes"]
DATA_NAMES = ("shapes", "flickr8k")
DEFAULT_REFERENCE = "full"  # table.reference unless set: the variant every other one is compared with
DATA_WITH_SLOT_LABELS = ("shapes",)  # captions that parse into slots (colour, shape, relation); see slots.py
DATA_GENERATED = ("shapes",)  # images the project makes itself: a report may show them (table.show_images default)


@dataclass
class DataSpec:
    name: str = "shapes"  # one of DATA_NAMES
    path: str = "../shared/flickr8k"  # flickr8k only; --data-dir or ABLATE_FLICKR8K override it
    eval_split: str = "test"  # captions, scores and probes are computed on this split
    eval_images: int = 0  # 0 = all images of eval_split
    train_images: int = 0  # 0 = all training images
    shapes: ShapesConfig = field(default_factory=ShapesConfig)  # [data.shapes]: the generator's settings

    def __post_init__(self):
        if self.name not in DATA_NAMES:
            raise UserError(f"data.name: must be one of {', '.join(DATA_NAMES)}, not {self.name!r}")
        if self.eval_images == 1 or self.eval_images < 0:
            raise UserError("data.eval_images: 0 (all) or at least 2 (the swap probes pair images)")


EXECUTORS = ("serial", "local", "ray")


@dataclass
class RunSpec:
    """Where and how the runs execute ([run]; each key also a `run-all` option). Only ``precision`` is
    part of the config hash; the device and threads per run are recorded in each run's provenance
    (they can move numbers by floating-point rounding: kernels differ across devices and thread counts)."""

    device: str = AUTO_DEVICE  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps
    precision: str = DEFAULT_PRECISION  # fp32 | bf16 | fp16 (autocast; fp32 measured fastest on these CPUs)
    executor: str = "serial"  # serial | local (a process pool on this machine) | ray
    cpus_per_run: int = 0  # torch threads per run; 0 = all cores (serial) or 1 (local, ray)
    gpus_per_run: float = 0.0  # ray only
    track: str = ""  # "mlflow": log each finished run to MLflow (ablations/tracking.py); "" = no tracker
    tracking_uri: str = ""  # "" = sqlite:///runs/mlflow.db

    def __post_init__(self):
        check_precision(self.precision)
        if self.executor not in EXECUTORS:
            raise UserError(f"run.executor: one of {', '.join(EXECUTORS)}, not {self.executor!r}")
        if self.track not in ("", "mlflow"):
            raise UserError(f"run.track: 'mlflow' or '' (no tracker), not {self.track!r}")
        if self.cpus_per_run < 0 or self.gpus_per_run < 0:
            raise UserError("run.cpus_per_run and run.gpus_per_run must be >= 0")


@dataclass
class BackboneSpec:
    vision: str = "efficientnet-lite0"
    language: str = CAPTION_LM


@dataclass
class ProbeSpec:
    swap_seed: int = 1234
    spice: bool = False
    nll_refs: int = 0  # likelihood swap: use the first N references of each image (0 = all); it is the costliest probe


@dataclass
class Variant:
    name: str
    model: CaptionModelConfig
    train: TrainConfig
    expect: list[str] = field(default_factory=list)  # keys of EXPECTATIONS
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


def _check_type(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    elif is_dataclass(default):  # a sub-table, e.g. [data.shapes]
        return _build(type(default), value, where, base=asdict(default))[0]
    else:
        ok = True
    if not ok:
        raise UserError(f"{where}: expected {type(default).__name__}, got {type(value).__name__} ({value!r})")
    return value


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
    for key, value in raw.items():
        if key not in defaults:
            raise UserError(f"{where}: unknown key '{key}'; known: {', '.join(defaults)}")
        values[key] = _check_type(value, defaults[key], f"{where}.{key}")
    try:
        return cls(**values), values
    except UserError as err:
        raise UserError(f"{where}: {err}") from err


TOP_KEYS = {"include", "table", "data", "backbones", "caption_lm", "model", "train", "probes", "variants", "sweep", "targets", "run"}
TABLE_KEYS = {"name", "description", "seeds", "notes", "requires", "reference", "show_images"}
VARIANT_KEYS = {"model", "train", "expect", "expected", "description", "seeds"}


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


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from err
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: TOML syntax error: {err}") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8") from err
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
    for key in head:
        if key not in TABLE_KEYS:
            raise UserError(f"{where}: unknown key 'table.{key}'; known: {', '.join(sorted(TABLE_KEYS))}")
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
    for i, sweep in enumerate(raw.get("sweep", [])):
        _expand_sweep(sweep, variants, rows, model_base, train_base, seeds, f"{where}: sweep[{i}]", reference)
    for v in variants.values():
        if set(v.expect) & NEEDS_SLOTS and data.name not in DATA_WITH_SLOT_LABELS:
            raise UserError(f"{where}: variants.{v.name}.expect: {', '.join(set(v.expect) & NEEDS_SLOTS)} needs "
                            "slot labels, which only the shapes data has")
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
    model, _ = _build(CaptionModelConfig, row.get("model", {}), f"{where}.model", copy.deepcopy(model_base))
    train, _ = _build(TrainConfig, row.get("train", {}), f"{where}.train", copy.deepcopy(train_base))
    expect = row.get("expect", [])
    expect = [expect] if isinstance(expect, str) else expect
    if not isinstance(expect, list) or any(e not in EXPECTATIONS for e in expect):
        raise UserError(f"{where}.expect: unknown expectation {expect!r}; known: {', '.join(EXPECTATIONS)} "
                        "(one name or a list)")
    expected = row.get("expected", "; ".join(EXPECTATIONS[e] for e in expect) or "nothing checked")
    seeds = _seeds(row.get("seeds", table_seeds), f"{where}.seeds")
    return Variant(vname, model, train, expect, str(expected), str(row.get("description", "")), seeds=seeds)


def _seeds(seeds: Any, where: str) -> list[int]:
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise UserError(f"{where}: expected a non-empty list of distinct integers >= 0, not {seeds!r}")
    return list(seeds)


def _expand_sweep(sweep: Any, variants: dict, rows: dict, model_base: dict, train_base: dict, table_seeds: list[int],
                  where: str, reference: str) -> None:
    """``{base = "full", key = "model.num_queries", values = [8, 32]}`` -> rows full-num_queries-8, ...
    (``base`` defaults to the table's reference variant)."""
    if not isinstance(sweep, dict) or set(sweep) - {"base", "key", "values", "expect"} or "key" not in sweep:
        raise UserError(f"{where}: a sweep needs 'key' and 'values' (and optional 'base', 'expect')")
    base = sweep.get("base", reference)
    if base not in rows:
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
            raise UserError(f"--set {setting!r}: expected SECTION.KEY=VALUE with SECTION one of {', '.join(owners)}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        except RecursionError as err:
            raise UserError(f"--set {name.strip()}: the value is nested too deeply") from err
        current = getattr(owners[section], section)
        updated, _ = _build(type(current), {key: value}, f"--set {section}", base=asdict(current))
        setattr(owners[section], section, updated)
