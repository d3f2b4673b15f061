"""Caption data sets: Flickr8k (original layout or Kaggle's captions.txt) and the synthetic ``shapes``.

Every problem in a data file is a UserError naming the file and line; the one known quirk of
Flickr8k.token.txt (captions for the non-existent ``…jpg.1``) is a warning and is skipped.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from .errors import UserError

SPLITS = ("train", "dev", "test")


def normalize_caption(text: str) -> str:
    """Lower-case, one space between words, no trailing full stop: what the LM learns to emit."""
    text = " ".join(text.strip().lower().split())
    return re.sub(r"\s*\.$", "", text).strip()


@dataclass
class CaptionData:
    name: str
    captions: dict[str, list[str]]  # image id -> normalised reference captions
    splits: dict[str, list[str]]  # split -> image ids
    images_dir: Path | None = None  # None: images are rendered from ``labels`` (shapes)
    labels: dict[str, dict] = field(default_factory=dict)  # structured labels (shapes only)
    problems: list[str] = field(default_factory=list)  # warnings met while loading

    def image_path(self, image_id: str) -> Path | None:
        return None if self.images_dir is None else self.images_dir / image_id

    def load_image(self, image_id: str) -> Image.Image:
        if self.images_dir is None:
            return render_shapes(self.labels[image_id])
        path = self.images_dir / image_id
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except FileNotFoundError as err:
            raise UserError(f"{path}: image listed in the data set but missing") from err
        except (OSError, ValueError, SyntaxError) as err:
            raise UserError(f"{path}: cannot read image ({err})") from err

    def split_fingerprint(self, split: str) -> str:
        h = hashlib.sha256(f"{self.name}:{split}".encode())
        for image_id in self.splits[split]:
            h.update(image_id.encode() + b"\n")
        return h.hexdigest()[:12]

    def split_captions(self, split: str) -> list[str]:
        return [c for image_id in self.splits[split] for c in self.captions[image_id]]


# ---------------------------------------------------------------- Flickr8k
TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_FILE = "captions.txt"
SPLIT_FILES = {s: f"Flickr_8k.{s}Images.txt" for s in SPLITS}
IMAGE_DIRS = ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset")


def _read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    return text.splitlines()


def load_flickr8k(root: str | Path) -> CaptionData:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: Flickr8k data directory not found (set --data-dir or ABLATE_FLICKR8K)")
    images_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if images_dir is None:
        raise UserError(f"{root}: no image folder (expected one of {', '.join(IMAGE_DIRS)})")
    present = {p.name for p in images_dir.iterdir()}
    problems: list[str] = []
    if (root / TOKEN_FILE).exists():
        captions = _parse_token_file(root / TOKEN_FILE, present, problems)
    elif (root / KAGGLE_FILE).exists():
        captions = _parse_kaggle_csv(root / KAGGLE_FILE, present, problems)
    else:
        raise UserError(f"{root}: no caption file ({TOKEN_FILE} or {KAGGLE_FILE})")
    splits = {}
    if all((root / f).exists() for f in SPLIT_FILES.values()):
        for split, fname in SPLIT_FILES.items():
            splits[split] = _parse_split_file(root / fname, captions, present)
    else:
        ids = sorted(captions)
        random.Random(0).shuffle(ids)
        n_test = n_dev = min(1000, len(ids) // 8)
        splits = {"test": sorted(ids[:n_test]), "dev": sorted(ids[n_test : n_test + n_dev]),
                  "train": sorted(ids[n_test + n_dev :])}
        problems.append(f"{root}: no official split files; used a seeded random split")
        warnings.warn(problems[-1])
    seen: dict[str, str] = {}
    for split, ids in splits.items():
        for image_id in ids:
            if image_id in seen and seen[image_id] != split:
                raise UserError(f"{root / SPLIT_FILES[split]}: image {image_id} is also in the {seen[image_id]} split")
            seen[image_id] = split
    return CaptionData("flickr8k", captions, splits, images_dir=images_dir, problems=problems)


def _add_caption(captions, seen_keys, key, image_id, caption, where, present, problems) -> None:
    if not caption.strip():
        raise UserError(f"{where}: empty caption for {image_id}")
    if key in seen_keys:
        raise UserError(f"{where}: duplicated caption id {key} (first at line {seen_keys[key]})")
    seen_keys[key] = where.rsplit(":", 1)[-1]
    if image_id not in present:
        if re.search(r"\.jpg\.\d+$", image_id):
            msg = f"{where}: caption for non-existent image {image_id} (a known Flickr8k quirk), skipped"
            if not problems or "known Flickr8k quirk" not in problems[-1]:
                warnings.warn(msg)
            problems.append(msg)
            return
        raise UserError(f"{where}: caption for missing image {image_id}")
    captions.setdefault(image_id, []).append(normalize_caption(caption))


def _parse_token_file(path: Path, present: set[str], problems: list[str]) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    seen_keys: dict[str, str] = {}
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        image_id, hash_, idx = key.rpartition("#")
        if not tab or not hash_ or not idx.isdigit() or not image_id:
            raise UserError(f"{path}:{n}: malformed line (expected '<image>#<n><TAB><caption>'): {line[:60]!r}")
        _add_caption(captions, seen_keys, key, image_id, caption, f"{path}:{n}", present, problems)
    if not captions:
        raise UserError(f"{path}: no captions")
    return captions


def _parse_kaggle_csv(path: Path, present: set[str], problems: list[str]) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    seen_keys: dict[str, str] = {}
    lines = _read_lines(path)
    if not lines or [h.strip() for h in lines[0].split(",")[:2]] != ["image", "caption"]:
        raise UserError(f"{path}:1: expected the header 'image,caption'")
    counts: dict[str, int] = {}
    for n, row in enumerate(csv.reader(io.StringIO("\n".join(lines[1:]))), start=2):
        if not row:
            continue
        if len(row) < 2:
            raise UserError(f"{path}:{n}: malformed line (expected 'image,caption')")
        image_id, caption = row[0].strip(), ",".join(row[1:])
        k = counts[image_id] = counts.get(image_id, -1) + 1
        key = f"{image_id}#{k}:{normalize_caption(caption)}"
        _add_caption(captions, seen_keys, key, image_id, caption, f"{path}:{n}", present, problems)
    return captions


def _parse_split_file(path: Path, captions: dict, present: set[str]) -> list[str]:
    ids = []
    for n, line in enumerate(_read_lines(path), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if image_id not in present:
            raise UserError(f"{path}:{n}: split names unknown image {image_id} (no such file)")
        if image_id not in captions:
            raise UserError(f"{path}:{n}: split names image {image_id} that has no captions")
        ids.append(image_id)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"{path}: image {dup} is listed twice")
    return ids


# ---------------------------------------------------------------- shapes
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 205, 30), "purple": (140, 60, 180), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (20, 26), "large": (38, 44)}  # radii in pixels: large enough to span several 32-px patches
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass
class ShapesConfig:
    seed: int = 0
    train: int = 3000
    dev: int = 300
    test: int = 500
    two_object_share: float = 0.6
    image_size: int = 224


def _place(rng: random.Random, relation: str, r1: int, r2: int, size: int):
    """Centres for two objects that make ``relation`` (object 1 relative to object 2) unambiguous."""
    m = 46  # margin from the border, larger than any radius
    lo, hi = m, size - m
    mid = size // 2
    along_1 = rng.randint(lo, mid - 42)  # centres >= 84 px apart: two large shapes never overlap
    along_2 = rng.randint(mid + 42, hi)
    across = rng.randint(lo + 20, hi - 20)
    across_2 = min(hi, max(lo, across + rng.randint(-25, 25)))
    if relation in ("left of", "above"):
        a1, a2 = along_1, along_2
    else:
        a1, a2 = along_2, along_1
    if relation in ("left of", "right of"):
        return (a1, across), (a2, across_2)
    return (across, a1), (across_2, a2)


def make_shapes_labels(cfg: ShapesConfig) -> dict[str, dict]:
    rng = random.Random(cfg.seed)
    labels = {}
    total = cfg.train + cfg.dev + cfg.test
    for i in range(total):
        n_obj = 2 if rng.random() < cfg.two_object_share else 1
        objs = []
        while len(objs) < n_obj:
            o = {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(SHAPES), "size": rng.choice(list(SIZES))}
            if all((o["colour"], o["shape"]) != (p["colour"], p["shape"]) for p in objs):
                objs.append(o)
        for o in objs:
            o["radius"] = rng.randint(*SIZES[o["size"]])
        background = tuple(rng.randint(225, 255) for _ in range(3))
        if n_obj == 1:
            objs[0]["centre"] = (rng.randint(60, cfg.image_size - 60), rng.randint(60, cfg.image_size - 60))
            relation = None
        else:
            relation = rng.choice(list(RELATIONS))
            c1, c2 = _place(rng, relation, objs[0]["radius"], objs[1]["radius"], cfg.image_size)
            objs[0]["centre"], objs[1]["centre"] = c1, c2
        labels[f"shapes_{i:05d}.png"] = {
            "objects": objs, "relation": relation, "background": background,
            "image_size": cfg.image_size, "noise_seed": rng.randint(0, 2**31 - 1),
        }
    return labels


def describe(o: dict) -> str:
    return f"{o['size']} {o['colour']} {o['shape']}"


def shapes_captions(label: dict, rng: random.Random) -> list[str]:
    """Five paraphrases, each naming colour, shape, size and (for two objects) the relation."""
    objs, rel = label["objects"], label["relation"]
    if rel is None:
        d = describe(objs[0])
        return [f"a {d}", f"there is a {d}", f"a picture of a {d}", f"one {d} on a plain background", f"a single {d}"]
    a, b = describe(objs[0]), describe(objs[1])
    inv = RELATIONS[rel]
    to = "to the " if rel in ("left of", "right of") else ""
    to_inv = "to the " if inv in ("left of", "right of") else ""
    caps = [f"a {a} {rel} a {b}", f"a {a} {to}{rel} a {b}", f"a {b} {inv} a {a}",
            f"there is a {a} {rel} a {b}", f"a {b} {to_inv}{inv} a {a}"]
    return caps


def render_shapes(label: dict) -> Image.Image:
    size = label["image_size"]
    img = Image.new("RGB", (size, size), tuple(label["background"]))
    draw = ImageDraw.Draw(img)
    for o in label["objects"]:
        (x, y), r, fill = o["centre"], o["radius"], COLOURS[o["colour"]]
        if o["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o["shape"] == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return img


def load_shapes(cfg: ShapesConfig | None = None) -> CaptionData:
    cfg = cfg or ShapesConfig()
    labels = make_shapes_labels(cfg)
    rng = random.Random(cfg.seed + 1)
    captions = {k: shapes_captions(v, rng) for k, v in labels.items()}
    ids = list(labels)
    splits = {"train": ids[: cfg.train], "dev": ids[cfg.train : cfg.train + cfg.dev],
              "test": ids[cfg.train + cfg.dev :]}
    digest = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:8]
    name = f"shapes-s{cfg.seed}-{cfg.train}-{cfg.dev}-{cfg.test}-{digest}"  # caches follow the content
    return CaptionData(name, captions, splits, images_dir=None, labels=labels)


_OBJ_RE = re.compile(r"(small|large) (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")")
_REL_RE = re.compile(r"(left of|right of|above|below)")


def parse_shapes_caption(caption: str) -> tuple[list[dict], str | None]:
    objs = [{"size": m[0], "colour": m[1], "shape": m[2]} for m in _OBJ_RE.findall(caption)]
    rel = _REL_RE.search(caption)
    return objs, rel.group(1) if rel else None


def slot_scores(caption: str, label: dict) -> dict[str, float]:
    """Per-slot correctness (0/1 or a fraction) of one generated caption against structured labels.

    colour/shape/size: share of the true objects whose attribute the caption names correctly
    (objects aligned in the better of the two orders); count: right number of objects;
    relation (two-object images only): the right relation between the right objects.
    """
    truth = label["objects"]
    parsed, rel = parse_shapes_caption(caption)
    scores = {"count": float(len(parsed) == len(truth))}
    orders = [list(range(len(parsed)))]
    if len(parsed) == 2:
        orders.append([1, 0])
    best, best_order = None, orders[0]
    for order in orders:
        per = {}
        for slot in ("colour", "shape", "size"):
            hits = sum(1 for i, t in enumerate(truth) if i < len(order) and parsed[order[i]][slot] == t[slot])
            per[slot] = hits / len(truth)
        if best is None or sum(per.values()) > sum(best.values()):
            best, best_order = per, order
    scores.update(best)
    if label["relation"] is not None:
        ok = False
        if len(parsed) == 2 and rel is not None:
            same_order = best_order == [0, 1]
            expected = label["relation"] if same_order else RELATIONS[label["relation"]]
            ok = rel == expected and all(
                parsed[best_order[i]][s] == truth[i][s] for i in range(2) for s in ("colour", "shape", "size"))
        scores["relation"] = float(ok)
    return scores
