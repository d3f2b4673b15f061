"""Caption data sets from files in the common layouts, read in place into one CaptionData: the Karpathy split
JSON, COCO caption annotations, one row per caption as JSONL or CSV (Hugging Face ``imagefolder``'s
``metadata.jsonl``), and Flickr8k's own folder.

One registry, FORMATS: a format's name -> its reader; a new layout is one entry. Every problem in a file is a
UserError naming the file and the line (JSONL, CSV, split files) or the JSON path (``images[12].sentences[3].raw``).
Splits come from the file (Karpathy's and COCO's ``split``, a ``split`` column), else from one file of image ids
per split, else from a seeded random draw whose seed and shares are the table's (so they are in each run's config).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from .data import SPLITS, CaptionData, normalize_caption, read_lines, read_text
from .errors import UserError
from .flickr8k import KAGGLE_FILE, TOKEN_FILE, load_flickr8k

AUTO = "auto"  # the format read from the file itself (detect_format)
# A file's split names -> ours (Karpathy: restval is more training data; val is our dev).
SPLIT_NAMES = {"train": "train", "restval": "train", "val": "dev", "validation": "dev", "dev": "dev", "test": "test"}
IMAGEFOLDER_FILES = {"metadata.jsonl": "jsonl", "metadata.csv": "csv"}  # Hugging Face imagefolder's caption file


@dataclass
class SplitFiles:
    """[data.splits]: one text file per split listing its images (file names, or COCO ids), one a line: the
    splits of a file that has none of its own (Flickr8k's Flickr_8k.trainImages.txt and the like)."""

    train: str = ""
    dev: str = ""
    test: str = ""


@dataclass
class Source:
    """Where a data set's files are and how to split one that carries no splits."""

    path: Path  # the data file (or a Flickr8k / imagefolder folder)
    images: Path | None = None  # the image root; None: the data file's own folder
    split_files: dict[str, Path] = field(default_factory=dict)  # split -> file of ids (all three, or none)
    split_seed: int = 0  # a seeded random split, when neither the file nor split_files give one
    dev_share: float = 0.1
    test_share: float = 0.1
    label: str = ""  # what the data set is called (default: the file's name)
    name: str = ""  # the CaptionData name, which keys the caches (default: label + a hash of the image root)
    _json: Any = field(default=None, init=False, repr=False)  # the parsed JSON, read once for detection and reading

    def __post_init__(self):
        self.path = Path(self.path)
        self.images = Path(self.images) if self.images is not None else None

    def json(self) -> Any:
        if self._json is None:
            text = read_text(self.path)
            try:
                self._json = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserError(f"{self.path}:{err.lineno}:{err.colno}: not valid JSON ({err.msg})") from err
            except RecursionError as err:
                raise UserError(f"{self.path}: JSON nested too deeply") from err
        return self._json


def default_label(path: Path) -> str:
    """A data set's name from its file: the stem (the folder's name for a folder or an imagefolder's
    metadata file), reduced to the characters a cache file name may hold."""
    path = Path(path)
    if path.name in IMAGEFOLDER_FILES or path.name in (TOKEN_FILE, KAGGLE_FILE):
        path = path.parent
    elif not path.is_dir():
        path = path.with_suffix("")
    name = path.name if path.name not in ("", ".", "..") else path.resolve().name
    return re.sub(r"[^A-Za-z0-9_+-]+", "-", name).strip("-") or "data"


def cache_name(label: str, image_root: Path) -> str:
    """A file data set's CaptionData name: its label and a hash of where its images are, so that two data sets
    with one label (two folders of 0001.png ...) never share a feature cache."""
    return f"{label}-{hashlib.sha256(str(Path(image_root).resolve()).encode()).hexdigest()[:8]}"


def detect_format(src: Source) -> str:
    """The format of a data file (or folder), from its name and, for JSON, its top-level keys."""
    path = src.path
    if path.is_dir():
        if (path / TOKEN_FILE).exists() or (path / KAGGLE_FILE).exists():
            return "flickr8k"
        for name, fmt in IMAGEFOLDER_FILES.items():
            if (path / name).is_file():
                return fmt
        raise UserError(f"{path}: a folder with neither Flickr8k's caption file ({TOKEN_FILE} or {KAGGLE_FILE}) nor "
                        f"an imagefolder's {' or '.join(IMAGEFOLDER_FILES)}; give the data file itself")
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.name in (TOKEN_FILE, KAGGLE_FILE):
        return "flickr8k"
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".csv"):
        return suffix[1:]
    if suffix == ".json":
        doc = src.json()
        if isinstance(doc, dict) and "annotations" in doc:
            return "coco"
        images = doc.get("images") if isinstance(doc, dict) else None
        if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
            return "karpathy"
        raise UserError(f"{path}: neither a Karpathy split file (images[].sentences) nor COCO caption annotations "
                        "(images[] and annotations[]); give the format")
    raise UserError(f"{path}: cannot tell the format from the name (.json, .jsonl, .csv or a Flickr8k folder); "
                    f"give it: one of {', '.join(FORMATS)}")


def read_captions(src: Source, fmt: str = AUTO) -> CaptionData:
    """The data set ``src`` names, read with the reader of ``fmt`` (AUTO: detected from the file)."""
    if fmt == AUTO:
        fmt = detect_format(src)
    if fmt not in FORMATS:
        raise UserError(f"unknown data format {fmt!r}; known: {AUTO}, {', '.join(FORMATS)}")
    if fmt in IMAGEFOLDER_FILES.values() and src.path.is_dir():
        name = next((n for n, f in IMAGEFOLDER_FILES.items() if f == fmt), "")
        src.path = src.path / name  # an imagefolder: its metadata file, the images beside it
    elif fmt != "flickr8k" and src.path.is_dir():
        raise UserError(f"{src.path}: a folder, not a {fmt} file (give the data file itself)")
    return FORMATS[fmt](src)


def check_source(src: Source, fmt: str) -> None:
    """What can be checked before any work without reading the data: the files named exist."""
    if not src.path.exists():
        raise UserError(f"{src.path}: data file not found (data.path)")
    if fmt in ("karpathy", "coco") and src.path.is_dir():
        raise UserError(f"{src.path}: a folder, not a {fmt} file (data.path)")
    if src.images is not None and not src.images.is_dir():
        raise UserError(f"{src.images}: image folder not found (data.images)")
    for split, path in src.split_files.items():
        if not path.is_file():
            raise UserError(f"{path}: split file not found (data.splits.{split})")


# ---- what every reader produces on the way: one entry per image, in file order

@dataclass
class _Image:
    where: str  # the file and the line or JSON path that declares the image
    captions: list[str] = field(default_factory=list)
    split: str | None = None  # ours (SPLIT_NAMES), when the file gives one


def _image_id(name: Any, where: str) -> str:
    """A file name from a data file as an image id: a relative path below the image root, nothing above it."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: expected an image file name, got {name!r}")
    path = PurePosixPath(name.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise UserError(f"{where}: {name!r}: an image must be a path below the image root (no '..', not absolute)")
    return str(path)


def _split(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in SPLIT_NAMES:
        raise UserError(f"{where}: unknown split {value!r}; known: {', '.join(SPLIT_NAMES)}")
    return SPLIT_NAMES[value.strip().lower()]


def _caption(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise UserError(f"{where}: expected a caption (a string), got {type(text).__name__}")
    caption = normalize_caption(text)
    if not caption:
        raise UserError(f"{where}: empty caption")
    return caption


JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number"}


def _field(obj: Any, key: str, kind: type | tuple, where: str) -> Any:
    """``obj[key]`` of the right type; ``where`` is the file and JSON path of ``obj`` ('f.json: images[3]', or
    'f.json:' for the top level), and each message names the path of what is wrong."""
    top = where.endswith(":")
    if not isinstance(obj, dict):
        raise UserError(f"{where[:-1] + ': the top level' if top else where}: expected a JSON object, got "
                        f"{type(obj).__name__}")
    at = f"{where} {key}" if top else f"{where}.{key}"
    if key not in obj:
        raise UserError(f"{at}: missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise UserError(f"{at}: expected {' or '.join(JSON_TYPES[k] for k in kinds)}, got {json.dumps(value)[:40]}")
    return value


def _assign_splits(src: Source, images: dict[str, _Image], aliases: dict[str, str],
                   problems: list[str]) -> dict[str, list[str]]:
    """The file's own splits, else one file of ids per split, else a seeded draw; each split in file order."""
    given = [i for i, e in images.items() if e.split is not None]
    if given:
        if src.split_files:
            raise UserError(f"{src.path}: its images carry their own split; leave data.splits out (or the field)")
        lacking = next((e for e in images.values() if e.split is None), None)
        if lacking is not None:
            raise UserError(f"{lacking.where}: no split, while {images[given[0]].where} has one")
        return {s: [i for i, e in images.items() if e.split == s] for s in SPLITS}
    if src.split_files:
        if set(src.split_files) != set(SPLITS):
            raise UserError(f"data.splits: give a file for each of {', '.join(SPLITS)}, not only "
                            f"{', '.join(src.split_files)}")
        return _read_split_files(src.split_files, images, aliases)
    if not 0 <= src.dev_share + src.test_share < 1:
        raise UserError(f"data.dev_share + data.test_share: must be below 1, not {src.dev_share + src.test_share:g}")
    ids = list(images)
    order = list(range(len(ids)))
    random.Random(src.split_seed).shuffle(order)
    n_test, n_dev = round(len(ids) * src.test_share), round(len(ids) * src.dev_share)
    drawn = {i: "test" for i in order[:n_test]} | {i: "dev" for i in order[n_test: n_test + n_dev]}
    splits = {s: [ids[k] for k in range(len(ids)) if drawn.get(k, "train") == s] for s in SPLITS}
    empty = [s for s in SPLITS if not splits[s]]
    if empty:
        raise UserError(f"{src.path}: {len(ids)} images leave the {', '.join(empty)} split empty in a random split "
                        f"(dev_share {src.dev_share:g}, test_share {src.test_share:g}); give splits in the file or "
                        "data.splits")
    problems.append(f"{src.path}: no splits in the file; a seeded random split (data.split_seed {src.split_seed}, "
                    f"dev_share {src.dev_share:g}, test_share {src.test_share:g})")
    return splits


def _read_split_files(files: dict[str, Path], images: dict[str, _Image],
                      aliases: dict[str, str]) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {}
    seen: dict[str, str] = {}  # image id -> "file:line" that placed it
    for split in SPLITS:
        path, ids = files[split], []
        for n, line in enumerate(read_lines(path), start=1):
            name = line.strip()
            if not name:
                continue
            image_id = name if name in images else aliases.get(name)
            if image_id is None:
                raise UserError(f"{path}:{n}: names image {name!r}, which the data file does not have (or gives no "
                                "captions)")
            if image_id in seen:
                raise UserError(f"{path}:{n}: image {name!r} is already in a split ({seen[image_id]})")
            seen[image_id] = f"{path}:{n}"
            ids.append(image_id)
        splits[split] = ids
    return splits


class _Present:
    """Which image files exist, one directory listing per folder (120k COCO images: one listing, not 120k stats)."""

    def __init__(self, root: Path):
        self.root, self.listed = root, {}

    def __call__(self, image_id: str) -> bool:
        folder = (self.root / image_id).parent
        if folder not in self.listed:
            try:
                self.listed[folder] = set(os.listdir(folder))
            except OSError:
                self.listed[folder] = set()
        return Path(image_id).name in self.listed[folder]


def _finish(src: Source, images: dict[str, _Image], problems: list[str],
            aliases: dict[str, str] | None = None) -> CaptionData:
    """Images without captions left out (noted), every other image's file present, splits assigned."""
    root = src.images if src.images is not None else src.path.parent
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found" + ("" if src.images is not None else
                                                             " (the data file's folder; set the image root)"))
    for image_id, entry in list(images.items()):
        if not entry.captions:
            problems.append(f"{entry.where}: image {image_id} has no captions; left out")
            del images[image_id]
    if not images:
        raise UserError(f"{src.path}: no captioned images")
    present = _Present(root)
    missing = [(i, e) for i, e in images.items() if not present(i)]
    if missing:
        (image_id, entry), more = missing[0], len(missing) - 1
        raise UserError(f"{entry.where}: image {image_id!r} not found in {root}"
                        + (f" (and {more} more missing)" if more else ""))
    splits = _assign_splits(src, images, aliases or {}, problems)
    name = src.name or cache_name(src.label or default_label(src.path), root)
    return CaptionData(name, {i: e.captions for i, e in images.items()}, splits, images_dir=root, problems=problems,
                       where={i: e.where for i, e in images.items()})


# ---- the readers

def read_karpathy(src: Source) -> CaptionData:
    """Karpathy's split JSON (dataset_coco.json, dataset_flickr30k.json, dataset_flickr8k.json): images[] with
    filepath (optional) + filename, split and sentences[].raw."""
    entries = _field(src.json(), "images", list, f"{src.path}:")
    images: dict[str, _Image] = {}
    for k, item in enumerate(entries):
        at = f"{src.path}: images[{k}]"
        name = _field(item, "filename", str, at)
        folder = _field(item, "filepath", str, at) if isinstance(item, dict) and "filepath" in item else ""
        image_id = _image_id(f"{folder}/{name}" if folder else name, f"{at}.filename")
        if image_id in images:
            raise UserError(f"{at}: duplicate image {image_id!r} (first at {images[image_id].where})")
        entry = images[image_id] = _Image(at, split=_split(_field(item, "split", str, at), f"{at}.split"))
        for j, sentence in enumerate(_field(item, "sentences", list, at)):
            entry.captions.append(_caption(_field(sentence, "raw", str, f"{at}.sentences[{j}]"),
                                           f"{at}.sentences[{j}].raw"))
    return _finish(src, images, [])


def read_coco(src: Source) -> CaptionData:
    """COCO caption annotations: images[] (id, file_name, optional split) and annotations[] (image_id, caption)."""
    doc = src.json()
    entries = _field(doc, "images", list, f"{src.path}:")
    annotations = _field(doc, "annotations", list, f"{src.path}:")
    images: dict[str, _Image] = {}
    by_id: dict[str, str] = {}  # str(COCO id) -> image id
    for k, item in enumerate(entries):
        at = f"{src.path}: images[{k}]"
        coco_id = str(_field(item, "id", (int, str), at))
        image_id = _image_id(_field(item, "file_name", str, at), f"{at}.file_name")
        if coco_id in by_id:
            raise UserError(f"{at}.id: duplicate id {coco_id} (first at {images[by_id[coco_id]].where})")
        if image_id in images:
            raise UserError(f"{at}.file_name: {image_id!r} also has another id (at {images[image_id].where})")
        split = _split(item["split"], f"{at}.split") if "split" in item else None
        images[image_id], by_id[coco_id] = _Image(at, split=split), image_id
    seen_annotations: dict[str, int] = {}
    for k, ann in enumerate(annotations):
        at = f"{src.path}: annotations[{k}]"
        coco_id = str(_field(ann, "image_id", (int, str), at))
        if coco_id not in by_id:
            raise UserError(f"{at}.image_id: no image with id {coco_id} in images[]")
        if "id" in ann:
            if str(ann["id"]) in seen_annotations:
                raise UserError(f"{at}.id: duplicate annotation id {ann['id']} (first at annotations"
                                f"[{seen_annotations[str(ann['id'])]}])")
            seen_annotations[str(ann["id"])] = k
        images[by_id[coco_id]].captions.append(_caption(_field(ann, "caption", str, at), f"{at}.caption"))
    return _finish(src, images, [], aliases=by_id)


def _add_row(images: dict[str, _Image], row: dict, where: str) -> None:
    """One JSONL / CSV row: file_name, text or caption (a string, or in JSONL a list of them), optional split."""
    if "file_name" not in row:
        raise UserError(f"{where}: no 'file_name'")
    image_id = _image_id(row["file_name"], f"{where}: file_name")
    keys = [k for k in ("text", "caption") if k in row]
    if len(keys) != 1:
        raise UserError(f"{where}: " + ("no 'text' (or 'caption')" if not keys else
                                        "both 'text' and 'caption'; give one"))
    texts = row[keys[0]] if isinstance(row[keys[0]], list) else [row[keys[0]]]
    split = _split(row["split"], f"{where}: split") if row.get("split") not in (None, "") else None
    entry = images.setdefault(image_id, _Image(where, split=split))
    if entry.split != split:
        raise UserError(f"{where}: image {image_id!r} in the {split} split here, in {entry.split} at {entry.where}")
    entry.captions += [_caption(t, f"{where}: {keys[0]}") for t in texts]


def read_jsonl(src: Source) -> CaptionData:
    """One JSON object a line (Hugging Face imagefolder's metadata.jsonl): file_name, text or caption, split."""
    images: dict[str, _Image] = {}
    for n, line in enumerate(read_lines(src.path), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{src.path}:{n}: not valid JSON ({err.msg} at column {err.colno})") from err
        except RecursionError as err:
            raise UserError(f"{src.path}:{n}: JSON nested too deeply") from err
        if not isinstance(row, dict):
            raise UserError(f"{src.path}:{n}: expected a JSON object, got {type(row).__name__}")
        _add_row(images, row, f"{src.path}:{n}")
    return _finish(src, images, [])


def read_csv(src: Source) -> CaptionData:
    """A CSV file with a header: file_name, text or caption, optional split; one row per caption."""
    reader = csv.reader(io.StringIO(read_text(src.path), newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        if "file_name" not in header or not {"text", "caption"} & set(header):
            raise UserError(f"{src.path}:1: expected a header with file_name and text (or caption), got {header}")
        images: dict[str, _Image] = {}
        line = reader.line_num + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) != len(header):
                    raise UserError(f"{src.path}:{line}: {len(row)} fields, the header has {len(header)}")
                _add_row(images, dict(zip(header, row)), f"{src.path}:{line}")
            line = reader.line_num + 1
    except csv.Error as err:
        raise UserError(f"{src.path}:{reader.line_num}: not valid CSV ({err})") from err
    return _finish(src, images, [])


def read_flickr8k(src: Source) -> CaptionData:
    """Flickr8k's own folder (Flickr8k.token.txt or captions.txt, the split files, Images/): vlm_core/flickr8k.py."""
    root = src.path.parent if src.path.is_file() else src.path  # Flickr8k.token.txt names its folder
    if src.split_files:
        raise UserError(f"{root}: Flickr8k has its own split files; leave data.splits out")
    data = load_flickr8k(root, src.images)
    data.name = src.name or cache_name(src.label or default_label(root), data.images_dir)
    return data


FORMATS: dict[str, Callable[[Source], CaptionData]] = {
    "karpathy": read_karpathy,
    "coco": read_coco,
    "jsonl": read_jsonl,
    "csv": read_csv,
    "flickr8k": read_flickr8k,
}
