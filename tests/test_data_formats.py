"""Caption data from files (vlm_core/caption_files.py): Karpathy, COCO, JSONL / CSV read the same data as the native
Flickr8k reader, a table run through each is bit-identical, bad files are one line naming the file and the line or
JSON path, and the [data] keys added for them leave every shipped run's config hash as it was."""
import importlib.util
import json
import random
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ablations.cli import app
from ablations.run.planning import expected_hash
from ablations.run.preflight import data_folder
from ablations.run.identity import config_hash, settings_of
from ablations.table_data import load_data, run_data
from ablations.tables import DataSpec, checked_section, load_table, shipped_tables
from vlm_core.caption_files import Source, read_captions
from vlm_core.errors import UserError
from vlm_core.flickr8k import load_flickr8k

from .micro import MICRO, VARIANTS

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SPLITS = ("train", "dev", "test")
WORDS = {"colour": ["red", "blue", "green", "brown", "black"], "thing": ["dog", "cat", "boy", "girl", "horse"],
         "act": ["runs", "jumps", "sits", "plays", "walks"], "place": ["grass", "beach", "snow", "street", "park"]}


def make_flickr_layout(root: Path, n=(24, 6, 6), unsplit: int = 2) -> Path:
    """A Flickr8k folder in the original layout (token file, three split files, Images/): generated JPEGs, five
    captions each, the token file in another order than the split files, images in no split and the known
    ``.jpg.1`` quirk, as the real one has."""
    rng = random.Random(0)
    (root / "Images").mkdir(parents=True)
    names = [f"{1000 + 7 * i}_{rng.randrange(16**6):06x}.jpg" for i in range(sum(n) + unsplit)]
    for i, name in enumerate(names):
        Image.new("RGB", (40, 32), (i * 37 % 255, 255 - i * 11 % 255, i * 73 % 255)).save(root / "Images" / name)
    lines = []
    for name in sorted(names, key=lambda _: rng.random()):
        for k in range(5):
            w = {key: rng.choice(vals) for key, vals in WORDS.items()}
            place = rng.choice(["", f" on the {w['place']}", f" on the {w['place']} with a ball"])
            lines.append(f"{name}#{k}\tA {w['colour']} {w['thing']} {w['act']}{place} .")
    lines.insert(7, f"{names[0]}.1#0\tA quirk line .")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    order = names[: sum(n)]
    rng.shuffle(order)
    for split, (start, stop) in zip(SPLITS, ((0, n[0]), (n[0], n[0] + n[1]), (n[0] + n[1], sum(n)))):
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(order[start:stop]) + "\n")
    return root


def flickr_files(root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The raw captions (token file order) and the split lists of a Flickr8k folder, read without our readers."""
    captions: dict[str, list[str]] = {}
    for line in (root / "Flickr8k.token.txt").read_text().splitlines():
        key, _, text = line.partition("\t")
        if (root / "Images" / key.rpartition("#")[0]).exists():
            captions.setdefault(key.rpartition("#")[0], []).append(text)
    splits = {s: (root / f"Flickr_8k.{s}Images.txt").read_text().split() for s in SPLITS}
    return captions, splits


def write_karpathy(root: Path, out: Path) -> Path:
    captions, splits = flickr_files(root)
    karpathy_split = {"train": "train", "dev": "val", "test": "test"}
    names = [(s, name) for s in SPLITS for name in splits[s]]
    images = [{"filename": name, "imgid": k, "split": karpathy_split[s],
               "sentences": [{"raw": c, "tokens": c.lower().split()} for c in captions[name]]}
              for k, (s, name) in enumerate(names)]
    out.write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    return out


def coco_script():
    spec = importlib.util.spec_from_file_location("make_coco_subset",
                                                  ROOT / "examples" / "flickr8k-coco" / "make_coco_subset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_coco(root: Path, out: Path, counts=None, split_field: bool = True) -> Path:
    doc = coco_script().coco_from_flickr8k(root, counts)
    if not split_field:
        for image in doc["images"]:
            del image["split"]
    out.write_text(json.dumps(doc))
    return out


@pytest.fixture
def flickr(tmp_path):
    return make_flickr_layout(tmp_path / "flickr8k")


def used_captions(data) -> list[str]:
    return [c for s in SPLITS for c in data.split_captions(s)]


def used(data) -> dict[str, list[str]]:
    """The captions of the images in a split: what a run reads (Flickr8k also has images in no split)."""
    return {i: data.captions[i] for s in SPLITS for i in data.splits[s]}


# ---- 1. one data set, three formats, the same data

def test_karpathy_and_coco_files_read_the_same_data_as_the_native_flickr8k_reader(flickr, tmp_path):
    native = load_flickr8k(flickr)
    karpathy = read_captions(Source(write_karpathy(flickr, tmp_path / "k.json"), images=flickr / "Images"))
    coco = read_captions(Source(write_coco(flickr, tmp_path / "c.json"), images=flickr / "Images"))
    split_files = {s: flickr / f"Flickr_8k.{s}Images.txt" for s in SPLITS}  # COCO without a split field
    coco_files = read_captions(Source(write_coco(flickr, tmp_path / "c2.json", split_field=False),
                                      images=flickr / "Images", split_files=split_files), "coco")
    assert len(native.captions) == 38 and [len(native.splits[s]) for s in SPLITS] == [24, 6, 6]
    for data in (karpathy, coco, coco_files):
        assert data.splits == native.splits  # same images, same splits, same order
        assert used(data) == used(native)  # same references, same order
        assert data.content_hash() == native.content_hash()
        assert data.images_dir == flickr / "Images"
    assert [native.load_image(i).tobytes() for i in native.splits["test"]] == \
        [coco.load_image(i).tobytes() for i in coco.splits["test"]]
    changed = json.loads((tmp_path / "k.json").read_text())
    changed["images"][0]["sentences"][0]["raw"] += " again"
    (tmp_path / "k3.json").write_text(json.dumps(changed))
    assert read_captions(Source(tmp_path / "k3.json", images=flickr / "Images")).content_hash() != native.content_hash()


def test_the_named_flickr8k_table_reads_as_before_and_file_tables_read_the_same_data(flickr, tmp_path):
    native = load_data(DataSpec(name="flickr8k", path=str(flickr)))
    assert native.name == "flickr8k" and native.captions == load_flickr8k(flickr).captions
    coco = load_data(DataSpec(format="coco", path=str(write_coco(flickr, tmp_path / "c.json")),
                              images=str(flickr / "Images"), eval_images=4, train_images=10))
    assert coco.splits["test"] == native.splits["test"][:4] and coco.splits["train"] == native.splits["train"][:10]
    assert coco.name.startswith("c-") and coco.name != native.name  # its own caches


def build_micro(path: Path, data: str) -> Path:
    text = MICRO.format(name="fmt", seeds=[0]).replace(
        '[data]\nname = "shapes"\n\n[data.shapes]\ntrain = 24\ndev = 8\ntest = 8\nseed = 7\n', data)
    assert data in text
    path.write_text(text + VARIANTS["full"].replace("{{", "{").replace("}}", "}"))
    return path


def test_a_table_run_is_bit_identical_through_native_karpathy_and_coco(flickr, tmp_path):
    images = flickr / "Images"
    blocks = {
        "native": f'[data]\nname = "flickr8k"\npath = "{flickr}"\n',
        "karpathy": f'[data]\nformat = "karpathy"\npath = "{write_karpathy(flickr, tmp_path / "k.json")}"\n'
                    f'images = "{images}"\n',
        "coco": f'[data]\nformat = "auto"\npath = "{write_coco(flickr, tmp_path / "c.json")}"\nimages = "{images}"\n',
    }
    results = {}
    for name, block in blocks.items():
        table = build_micro(tmp_path / f"{name}.toml", block)
        runs = tmp_path / f"runs-{name}"
        result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(runs), "--cache-dir",
                                     str(tmp_path / "cache")])
        assert result.exit_code == 0, result.output
        cell = runs / "fmt" / "full" / "seed-0"
        metrics = json.loads((cell / "metrics.json").read_text())
        results[name] = {"captions": json.loads((cell / "captions.json").read_text()),
                         "metrics": metrics["metrics"], "probes": metrics["probes"], "images": metrics["images"],
                         "history": [{k: v for k, v in row.items() if "seconds" not in k and "time" not in k}
                                     for row in json.loads((cell / "history.json").read_text())],
                         "per_image": (cell / "per_image.csv").read_text()}
    assert results["native"]["images"] == 6 and len(results["native"]["captions"]) == 6
    assert results["karpathy"] == results["native"]
    assert results["coco"] == results["native"]
    features = sorted(p.name for p in (tmp_path / "cache" / "features").glob("*.npy"))
    assert len(features) == 9  # each data set its own streamed cache: three splits x three names


# ---- 2. JSONL / CSV rows, imagefolder, splits

def test_split_files_may_list_coco_ids(flickr, tmp_path):
    doc = json.loads(write_coco(flickr, tmp_path / "c.json", split_field=False).read_text())
    by_name = {image["file_name"]: image["id"] for image in doc["images"]}
    _, splits = flickr_files(flickr)
    files = {}
    for s in SPLITS:
        files[s] = tmp_path / f"{s}.ids"
        files[s].write_text("".join(f"{by_name[n]}\n" for n in splits[s]))
    data = read_captions(Source(tmp_path / "c.json", images=flickr / "Images", split_files=files))
    assert data.splits == load_flickr8k(flickr).splits
    files["dev"].write_text("12345\n")
    with pytest.raises(UserError, match=r"dev\.ids:1: names image '12345', which the data file does not have"):
        read_captions(Source(tmp_path / "c.json", images=flickr / "Images", split_files=files))


def _images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i * 20, 40, 90)).save(folder / name)


def test_an_imagefolder_metadata_jsonl_with_its_split_column_is_read_from_the_folder(tmp_path):
    folder = tmp_path / "pets"
    names = [f"{i:04d}.png" for i in range(8)]
    _images(folder, names)
    rows = [{"file_name": n, "text": [f"A pet number {i} .", "Another caption ."] if i % 2 else f"Pet {i} here .",
             "split": ["train", "train", "train", "train", "validation", "val", "test", "test"][i]}
            for i, n in enumerate(names)]
    rows.append({"file_name": names[0], "text": "A third view of pet zero .", "split": "train"})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = read_captions(Source(folder))  # the folder: its metadata.jsonl, images beside it
    assert data.splits == {"train": names[:4], "dev": names[4:6], "test": names[6:]}
    assert data.captions[names[0]] == ["pet 0 here", "a third view of pet zero"]
    assert data.captions[names[1]] == ["a pet number 1", "another caption"]
    assert data.name.startswith("pets-") and data.where[names[1]].endswith("metadata.jsonl:2")


def test_csv_rows_with_a_quoted_newline_keep_their_line_numbers(tmp_path):
    _images(tmp_path / "img", ["a.jpg", "b.jpg", "c.jpg"])
    text = 'file_name,caption,split\na.jpg,"A dog,\nrunning .",train\nb.jpg,A cat .,dev\nc.jpg,A cow .,test\n' \
           'c.jpg,,test\n'
    (tmp_path / "caps.csv").write_text(text)
    with pytest.raises(UserError, match=r"caps.csv:6: caption: empty caption"):
        read_captions(Source(tmp_path / "caps.csv", images=tmp_path / "img"))
    (tmp_path / "caps.csv").write_text(text.replace("c.jpg,,test\n", ""))
    data = read_captions(Source(tmp_path / "caps.csv", images=tmp_path / "img"))
    assert data.captions["a.jpg"] == ["a dog, running"] and data.where["b.jpg"].endswith("caps.csv:4")


def test_a_file_without_splits_gets_a_seeded_random_split_and_says_so(tmp_path):
    names = [f"{i}.jpg" for i in range(40)]
    _images(tmp_path, names)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"file_name": n, "caption": f"thing {n}"}) + "\n"
                                              for n in names))
    a, b = (read_captions(Source(tmp_path / "c.jsonl", split_seed=3, dev_share=0.1, test_share=0.2)) for _ in "ab")
    c = read_captions(Source(tmp_path / "c.jsonl", split_seed=4, dev_share=0.1, test_share=0.2))
    assert a.splits == b.splits != c.splits
    assert [len(a.splits[s]) for s in SPLITS] == [28, 4, 8]
    assert sorted(i for s in SPLITS for i in a.splits[s]) == sorted(names)
    assert all(a.splits[s] == [n for n in names if n in a.splits[s]] for s in SPLITS)  # file order kept
    assert "seeded random split (data.split_seed 3, dev_share 0.1, test_share 0.2)" in a.problems[0]
    spec = DataSpec(format="jsonl", path=str(tmp_path / "c.jsonl"), split_seed=3, test_share=0.2)
    assert load_data(spec).splits == a.splits and asdict(spec)["split_seed"] == 3  # recorded in the run's config


def test_karpathy_subfolders_and_restval(tmp_path):
    _images(tmp_path / "coco", ["val2014/a.jpg", "train2014/b.jpg", "train2014/c.jpg", "val2014/d.jpg"])
    doc = {"images": [{"filepath": "val2014", "filename": "a.jpg", "split": "restval", "sentences": [{"raw": "A ."}]},
                      {"filepath": "train2014", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "B ."}]},
                      {"filepath": "train2014", "filename": "c.jpg", "split": "val", "sentences": [{"raw": "C ."}]},
                      {"filepath": "val2014", "filename": "d.jpg", "split": "test", "sentences": [{"raw": "D ."}]}]}
    (tmp_path / "coco" / "dataset_coco.json").write_text(json.dumps(doc))
    data = read_captions(Source(tmp_path / "coco" / "dataset_coco.json"))
    assert data.splits == {"train": ["val2014/a.jpg", "train2014/b.jpg"], "dev": ["train2014/c.jpg"],
                           "test": ["val2014/d.jpg"]}
    assert data.load_image("val2014/d.jpg").size == (16, 16)
    doc["images"][0]["filename"] = "../../etc/passwd"
    (tmp_path / "coco" / "dataset_coco.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"images\[0\]\.filename: .*below the image root"):
        read_captions(Source(tmp_path / "coco" / "dataset_coco.json"))


# ---- 3. `ablate data check`: a summary, or one line naming the file and where in it

def _check(*args):
    return runner.invoke(app, ["data", "check", *[str(a) for a in args]])


def test_data_check_summarises_a_coco_file_and_names_an_unreadable_image_by_json_path(flickr, tmp_path):
    coco = write_coco(flickr, tmp_path / "c.json")
    result = _check(coco, "--image-root", flickr / "Images")
    assert result.exit_code == 0, result.output
    q = np.percentile([len(c.split()) for c in used_captions(load_flickr8k(flickr))], [0, 10, 50, 90, 100],
                      method="nearest")
    out = " ".join(result.output.split())
    assert "(coco: " in out and "images with captions: 36; captions: 180; captions per image: min 5, median 5, " \
                                 "max 5" in out
    assert "splits: train 24, dev 6, test 6 images" in out
    assert f"caption length in words: min 4, 10% {q[1]}, median {q[2]}, 90% {q[3]}, max 10" in out
    assert f"content hash (splits and references): {load_flickr8k(flickr).content_hash()}" in out
    victim = json.loads(coco.read_text())["images"][3]["file_name"]
    (flickr / "Images" / victim).write_bytes(b"\xff\xd8\xff not a jpeg")
    result = _check(coco, "--image-root", flickr / "Images")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"c.json: images[3]: {flickr / 'Images' / victim}: cannot read image" in " ".join(result.output.split())


def _karpathy(flickr, tmp_path):
    return json.loads(write_karpathy(flickr, tmp_path / "k.json").read_text())


def _bad_json(flickr, tmp_path):
    path = write_karpathy(flickr, tmp_path / "k.json")
    path.write_text(path.read_text().replace("}, {", "}\n{", 3))
    return [path, "--image-root", flickr / "Images"], r"k\.json:2:1: not valid JSON"


def _missing_key(flickr, tmp_path):
    doc = json.loads(write_coco(flickr, tmp_path / "c.json").read_text())
    del doc["annotations"][7]["caption"]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    return [tmp_path / "c.json", "--image-root", flickr / "Images"], r"c\.json: annotations\[7\]\.caption: missing"


def _missing_image(flickr, tmp_path):
    doc = _karpathy(flickr, tmp_path)
    (flickr / "Images" / doc["images"][5]["filename"]).unlink()
    return ([tmp_path / "k.json", "--image-root", flickr / "Images"],
            rf"k\.json: images\[5\]: image '{doc['images'][5]['filename']}' not found in ")


def _empty_caption(flickr, tmp_path):
    doc = _karpathy(flickr, tmp_path)
    doc["images"][2]["sentences"][1]["raw"] = " . "
    (tmp_path / "k.json").write_text(json.dumps(doc))
    return [tmp_path / "k.json", "--image-root", flickr / "Images"], r"k\.json: images\[2\]\.sentences\[1\]\.raw: " \
                                                                     "empty caption"


def _duplicate_id(flickr, tmp_path):
    doc = json.loads(write_coco(flickr, tmp_path / "c.json").read_text())
    doc["images"][9]["id"] = doc["images"][4]["id"]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    return [tmp_path / "c.json", "--image-root", flickr / "Images"], r"c\.json: images\[9\]\.id: duplicate id 5 " \
                                                                     r"\(first at .*c\.json: images\[4\]\)"


def _two_splits(flickr, tmp_path):
    captions, splits = flickr_files(flickr)
    rows = [{"file_name": n, "text": c, "split": s} for s in SPLITS for n in splits[s] for c in captions[n]]
    rows.append({"file_name": splits["train"][0], "text": "it is here too", "split": "test"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ([tmp_path / "m.jsonl", "--image-root", flickr / "Images"],
            rf"m\.jsonl:181: image '{splits['train'][0]}' in the test split here, in train at .*m\.jsonl:1")


def _not_utf8(flickr, tmp_path):
    captions, splits = flickr_files(flickr)
    lines = ["file_name,text"] + [f"{n},{c}" for n in splits["train"] for c in captions[n]]
    (tmp_path / "c.csv").write_bytes("\n".join(lines[:4]).encode() + b"\n" + lines[4].encode() + b" caf\xe9\n")
    return [tmp_path / "c.csv", "--image-root", flickr / "Images"], r"c\.csv:5: not valid UTF-8"


def _a_folder(flickr, tmp_path):
    (tmp_path / "d.json").mkdir()
    return [tmp_path / "d.json", "--format", "coco"], r"d\.json: a folder, not a coco file"


@pytest.mark.parametrize("broken", [_bad_json, _missing_key, _missing_image, _empty_caption, _duplicate_id,
                                    _two_splits, _not_utf8, _a_folder])
def test_a_broken_data_file_is_one_line_naming_the_file_and_where(flickr, tmp_path, broken):
    args, message = broken(flickr, tmp_path)
    result = _check(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert re.search(message, lines[0]), lines[0]


def test_more_bad_inputs_name_the_file(flickr, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty: a folder with neither Flickr8k's caption file"):
        read_captions(Source(empty))
    (tmp_path / "x.txt").write_text("hello\n")
    with pytest.raises(UserError, match=r"x\.txt: cannot tell the format"):
        read_captions(Source(tmp_path / "x.txt"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"list\.json: the top level: expected a JSON object"):
        read_captions(Source(tmp_path / "list.json"), "karpathy")
    doc = json.loads(write_coco(flickr, tmp_path / "c.json").read_text())
    doc["annotations"][0]["image_id"] = 999
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"annotations\[0\]\.image_id: no image with id 999"):
        read_captions(Source(tmp_path / "c.json", images=flickr / "Images"))
    doc = _karpathy(flickr, tmp_path)
    doc["images"].append(doc["images"][3])
    (tmp_path / "k.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"k\.json: images\[36\]: duplicate image '.*' "
                                        r"\(first at .*k\.json: images\[3\]\)"):
        read_captions(Source(tmp_path / "k.json", images=flickr / "Images"))
    files = {s: flickr / f"Flickr_8k.{s}Images.txt" for s in SPLITS}
    write_coco(flickr, tmp_path / "c.json", split_field=False)
    (flickr / "Flickr_8k.testImages.txt").write_text((flickr / "Flickr_8k.devImages.txt").read_text())
    with pytest.raises(UserError, match=r"Flickr_8k\.testImages\.txt:1: image '.*' is already in a split "
                                        r"\(.*Flickr_8k\.devImages\.txt:1\)"):
        read_captions(Source(tmp_path / "c.json", images=flickr / "Images", split_files=files))


# ---- 4. tables: the keys, their checks, and config hashes that stay as they were

def test_every_shipped_cell_in_the_evidence_keeps_its_config_hash():
    checked = 0
    for name in shipped_tables():
        table = load_table(name)
        for v in table.variants.values():
            for seed in v.seeds:
                config = ROOT / "reports" / table.name / "runs" / v.name / f"seed-{seed}" / "config.json"
                if config.exists():
                    stored = json.loads(config.read_text())
                    assert expected_hash(table, v, seed) == stored["config_hash"], (name, v.name, seed)
                    assert config_hash(settings_of(stored)) == stored["config_hash"]
                    checked += 1
    assert checked >= 100


def test_data_keys_enter_the_hash_only_when_set():
    before = {"name": "flickr8k", "path": "../shared/flickr8k", "eval_split": "test", "eval_images": 0,
              "train_images": 0, "shapes": asdict(DataSpec().shapes)}  # a [data] section stored before them
    now = asdict(DataSpec(name="flickr8k"))
    assert set(now) - set(before) == {"format", "images", "splits", "split_seed", "dev_share", "test_share"}
    assert config_hash({"data": now, "seed": 0}) == config_hash({"data": before, "seed": 0})
    for key, value in [("format", "coco"), ("images", "x"), ("splits", {"train": "a", "dev": "b", "test": "c"}),
                       ("split_seed", 1), ("dev_share", 0.2), ("test_share", 0.05)]:
        assert config_hash({"data": {**now, key: value}, "seed": 0}) != config_hash({"data": before, "seed": 0}), key
    old = checked_section(DataSpec, before, "config.json: data")  # a stored run's section reads back
    assert old == DataSpec(name="flickr8k")


def test_a_file_table_names_its_data_set_after_the_file_and_checks_its_keys(tmp_path, flickr):
    coco = write_coco(flickr, tmp_path / "my-coco.json")
    block = f'[data]\nformat = "coco"\npath = "{coco}"\nimages = "{flickr / "Images"}"\n'
    table = load_table(str(build_micro(tmp_path / "t.toml", block)))
    assert table.data.name == "my-coco" and table.show_images is False
    stored = run_data({"data": asdict(table.data), "eval_split": "test"})
    assert stored.content_hash() == load_flickr8k(flickr).content_hash()
    bad = {'format = "coco"': ('format = "parquet"', r"data: data\.format: one of auto, karpathy"),
           f'images = "{flickr / "Images"}"': ('dev_share = 0.6\ntest_share = 0.5',
                                                 r"data\.dev_share \+ data\.test_share: must be below 1"),
           'path = ': ('splits = { train = "a", val = "b" }\npath = ', r"data\.splits: unknown key 'val'")}
    for old, (new, message) in bad.items():
        with pytest.raises(UserError, match=message):
            load_table(str(build_micro(tmp_path / "bad.toml", block.replace(old, new))))
    named = '[data]\nname = "flickr8k"\nimages = "x"\n'
    with pytest.raises(UserError, match=r"data\.images, data\.splits.*only with data\.format"):
        load_table(str(build_micro(tmp_path / "bad.toml", named)))
    with pytest.raises(UserError, match=r"data\.name: must be one of shapes, flickr8k, not 'mine' \(a data file"):
        load_table(str(build_micro(tmp_path / "bad.toml", '[data]\nname = "mine"\n')))


def test_preflight_names_a_missing_data_file_and_the_table(tmp_path):
    table = load_table(str(build_micro(tmp_path / "t.toml", f'[data]\nformat = "coco"\npath = "{tmp_path}/no.json"\n')))
    with pytest.raises(UserError, match=r"no\.json: data file not found \(data\.path\); fix it in .*t\.toml"):
        data_folder(table, None)


# ---- 5. the walkthrough's script

def test_the_walkthrough_script_writes_the_first_images_of_each_split(flickr, tmp_path):
    doc = coco_script().coco_from_flickr8k(flickr, {"train": 5, "dev": 2, "test": 3})
    (tmp_path / "sub.json").write_text(json.dumps(doc))
    data = read_captions(Source(tmp_path / "sub.json", images=flickr / "Images"))
    native = load_flickr8k(flickr)
    assert data.splits == {"train": native.splits["train"][:5], "dev": native.splits["dev"][:2],
                           "test": native.splits["test"][:3]}
    assert used(data) == {i: native.captions[i] for s in SPLITS for i in data.splits[s]}
