"""What every caption data set is: reference captions per image, splits, and how to load an image.

The data sets themselves: flickr8k.py (Flickr8k's own files), caption_files.py (common caption file formats,
Flickr8k's among them) and shapes.py (generated).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

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
    problems: list[str] = field(default_factory=list)  # known quirks met and skipped while loading
    render: Callable[[dict], Image.Image] | None = None  # draws an image from its labels (shapes)
    where: dict[str, str] = field(default_factory=dict)  # image id -> the file and line / JSON path declaring it

    def load_image(self, image_id: str) -> Image.Image:
        if image_id not in self.captions:  # an id from a stored record never names an arbitrary file
            raise UserError(f"{image_id!r}: not an image of the {self.name} data set")
        if self.images_dir is None:
            return self.render(self.labels[image_id])
        path = self.images_dir / image_id
        if not path.exists():
            raise UserError(f"{path}: image listed in the data set but missing")
        return open_image(path)

    def split_fingerprint(self, split: str) -> str:
        h = hashlib.sha256(f"{self.name}:{split}".encode())
        for image_id in self.splits[split]:
            h.update(image_id.encode() + b"\n")
        return h.hexdigest()[:12]

    def split_captions(self, split: str) -> list[str]:
        return [c for image_id in self.splits[split] for c in self.captions[image_id]]

    def content_hash(self) -> str:
        """What a run sees of the data: each split's images in order, each with its references in order. Not the
        name, the file format or where the files are, so one data set written in two formats hashes the same."""
        seen = {s: [[i, self.captions[i]] for i in self.splits[s]] for s in sorted(self.splits)}
        return hashlib.sha256(json.dumps(seen, ensure_ascii=False).encode()).hexdigest()[:16]


MAX_PIXELS = 40_000_000  # larger than any camera photo; a batch of 32 such images already needs ~4 GB


def open_image(path: Path) -> Image.Image:
    """An image file as RGB; a file that claims more than MAX_PIXELS (a decompression bomb, or just huge)
    or cannot be decoded is a UserError naming it, decided from the header before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise UserError(f"{path}: {img.width}x{img.height} pixels, more than the {MAX_PIXELS:,} "
                                    "an image may have here (refused before decoding)")
                img.load()
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(f"{path}: refused, too many pixels ({err})") from err
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such image file") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{path}: cannot read image ({err})") from err


def read_text(path: Path) -> str:
    """A UTF-8 text file (a leading byte-order mark, as real copies of Flickr8k have, is dropped); a folder, a
    missing or special file (a pipe, /dev/zero) and bad bytes are each a UserError naming the file (and line)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a pipe must not block before it is refused
    except IsADirectoryError as err:
        raise UserError(f"{path}: a folder, not a file") from err
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such file") from err
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from err
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{path}: a folder, not a file")
        if not stat.S_ISREG(mode):
            raise UserError(f"{path}: not a regular file")
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 ({err.reason} at byte {err.start})") from err


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (see read_text)."""
    return read_text(path).splitlines()
