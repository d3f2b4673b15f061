"""Write a COCO caption file from Flickr8k's own files: the walkthrough of docs/tables.md ("Bring your own data").

    python examples/flickr8k-coco/make_coco_subset.py ../shared/flickr8k examples/flickr8k-coco/flickr8k-coco.json \
        --train 300 --dev 50 --test 100

The first N images of each official split (in the split files' order), each with its captions in the token file's
order and its split in the image's ``split`` field (``val`` for dev, as COCO-Karpathy files write it). The images
are not copied: the table's ``data.images`` points at Flickr8k's Images/ folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
COCO_SPLIT = {"train": "train", "dev": "val", "test": "test"}


def coco_from_flickr8k(root: Path, counts: dict[str, int] | None = None) -> dict:
    """The COCO caption annotations of the first ``counts[split]`` images of each split (None: all)."""
    root = Path(root)
    captions: dict[str, list[str]] = {}
    for line in (root / "Flickr8k.token.txt").read_text(encoding="utf-8-sig").splitlines():
        key, tab, text = line.partition("\t")
        if tab:
            captions.setdefault(key.rpartition("#")[0], []).append(text)
    images, annotations = [], []
    for split, name in SPLIT_FILES.items():
        names = [n.strip() for n in (root / name).read_text(encoding="utf-8-sig").splitlines() if n.strip()]
        for file_name in names[: counts[split]] if counts else names:
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": file_name, "split": COCO_SPLIT[split]})
            for caption in captions[file_name]:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    return {"info": {"description": f"Flickr8k ({root}) as COCO captions"}, "images": images,
            "annotations": annotations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("flickr8k", type=Path, help="Flickr8k folder (Flickr8k.token.txt, the split files, Images/)")
    ap.add_argument("out", type=Path, help="the COCO JSON file to write")
    for split, n in (("train", 300), ("dev", 50), ("test", 100)):
        ap.add_argument(f"--{split}", type=int, default=n, help=f"images of the {split} split (default {n})")
    args = ap.parse_args()
    doc = coco_from_flickr8k(args.flickr8k, {"train": args.train, "dev": args.dev, "test": args.test})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, ensure_ascii=False))
    print(f"{args.out}: {len(doc['images'])} images, {len(doc['annotations'])} captions")


if __name__ == "__main__":
    main()
