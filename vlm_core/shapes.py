"""``shapes``: generated images of one or two coloured shapes with a spatial relation, and
captions that name colour, shape, size and relation (structured labels kept for slot scores).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .data import CaptionData
from .errors import UserError

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
           "yellow": (235, 205, 30), "purple": (140, 60, 180), "orange": (245, 140, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (20, 26), "large": (38, 44)}  # radii in pixels: large enough to span several 32-px patches
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# Bounds of the generator: it makes every label up front (in memory), and _place needs this many pixels for two
# large shapes 84 px apart inside the 46-px margins.
MAX_IMAGES = 1_000_000
MIN_IMAGE_SIZE = 176


@dataclass
class ShapesConfig:
    seed: int = 0
    train: int = 3000
    dev: int = 300
    test: int = 500
    two_object_share: float = 0.6
    image_size: int = 224

    def __post_init__(self):
        if self.train + self.dev + self.test > MAX_IMAGES:
            raise UserError(f"train + dev + test must be at most {MAX_IMAGES:_} images, not "
                            f"{self.train + self.dev + self.test:_}")


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


def _draw(draw: ImageDraw.ImageDraw, o: dict, fill) -> None:
    (x, y), r = o["centre"], o["radius"]
    if o["shape"] == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif o["shape"] == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)


def render_shapes(label: dict) -> Image.Image:
    size = label["image_size"]
    img = Image.new("RGB", (size, size), tuple(label["background"]))
    draw = ImageDraw.Draw(img)
    for o in label["objects"]:
        _draw(draw, o, COLOURS[o["colour"]])
    return img


def object_masks(label: dict) -> list[tuple[dict, np.ndarray]]:
    """Each object's labels with its pixel mask [size, size] (bool), drawn exactly as it is rendered;
    ``box`` (x0, y0, x1, y1) is added to the labels."""
    size, out = label["image_size"], []
    for o in label["objects"]:
        img = Image.new("L", (size, size), 0)
        _draw(ImageDraw.Draw(img), o, 255)
        mask = np.asarray(img) > 0
        ys, xs = np.nonzero(mask)
        out.append(({**o, "box": (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)}, mask))
    return out


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
    return CaptionData(name, captions, splits, images_dir=None, labels=labels, render=render_shapes)


_OBJ_RE = re.compile(r"(small|large) (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")")
_REL_RE = re.compile(r"(left of|right of|above|below)")


def parse_shapes_caption(caption: str) -> tuple[list[dict], str | None]:
    objs = [{"size": m[0], "colour": m[1], "shape": m[2]} for m in _OBJ_RE.findall(caption)]
    rel = _REL_RE.search(caption)
    return objs, rel.group(1) if rel else None
