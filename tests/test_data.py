"""Data loaders: Flickr8k layouts and their errors, the shapes generator, slot parsing, feature cache."""
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ablations.measure.slots import slot_scores
from vlm_core.data import normalize_caption
from vlm_core.flickr8k import load_flickr8k
from vlm_core.shapes import ShapesConfig, load_shapes, parse_shapes_caption, render_shapes
from vlm_core.errors import UserError


def make_flickr(root: Path, n: int = 6, kaggle: bool = False) -> Path:
    (root / "Images").mkdir(parents=True)
    names = [f"{1000 + i}_abc.jpg" for i in range(n)]
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), (i * 30 % 255, 80, 120)).save(root / "Images" / name)
    if kaggle:
        lines = ["image,caption"] + [f"{name},A dog number {i} runs {k} ." for i, name in enumerate(names) for k in range(5)]
        (root / "captions.txt").write_text("\n".join(lines) + "\n")
    else:
        lines = [f"{name}#{k}\tA dog number {i} runs {k} ." for i, name in enumerate(names) for k in range(5)]
        lines += [f"{names[0]}.1#{k}\tA quirk line {k} ." for k in range(5)]  # the known non-existent image
        (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names[: n - 2]) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text(names[n - 2] + "\n")
    (root / "Flickr_8k.testImages.txt").write_text(names[n - 1] + "\n")
    return root


def test_flickr_original_layout_skips_known_quirk_as_a_listed_problem(tmp_path):
    root = make_flickr(tmp_path / "f")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # listed in data.problems (the CLI prints one note), not a Python warning
        data = load_flickr8k(root)
    assert len(data.captions) == 6 and all(len(v) == 5 for v in data.captions.values())
    assert [len(data.splits[s]) for s in ("train", "dev", "test")] == [4, 1, 1]
    assert data.captions["1000_abc.jpg"][0] == "a dog number 0 runs 0"
    assert len(data.problems) == 5 and all("known Flickr8k quirk" in p for p in data.problems)


@pytest.mark.parametrize("name", ["Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "Flickr_8k.testImages.txt"])
def test_a_byte_order_mark_at_the_start_of_a_caption_or_split_file_loads(tmp_path, name):
    root = make_flickr(tmp_path / "f")
    plain = load_flickr8k(root)
    (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    data = load_flickr8k(root)
    assert data.captions == plain.captions and data.splits == plain.splits


def test_flickr_kaggle_csv(tmp_path):
    data = load_flickr8k(make_flickr(tmp_path / "k", kaggle=True))
    assert len(data.captions) == 6 and data.split_captions("test")[0].startswith("a dog number 5")


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace("\t", " ", 1), ":1: malformed line"),
    (lambda t: t.replace("A dog number 0 runs 1 .", "   "), ":2: empty caption"),
    (lambda t: t + "9999_missing.jpg#0\tA cat .\n", ": caption for missing image 9999_missing.jpg"),
    (lambda t: t + "1000_abc.jpg#0\tagain .\n", "duplicated caption id 1000_abc.jpg#0"),
])
def test_flickr_caption_errors_name_file_and_line(tmp_path, mutate, message):
    root = make_flickr(tmp_path / "f")
    token = root / "Flickr8k.token.txt"
    token.write_text(mutate(token.read_text()))
    with pytest.raises(UserError, match=message) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_flickr8k(root)
    assert "Flickr8k.token.txt" in str(err.value)


def test_flickr_non_utf8_and_split_errors(tmp_path):
    root = make_flickr(tmp_path / "f")
    token = root / "Flickr8k.token.txt"
    token.write_bytes(token.read_bytes() + b"1001_abc.jpg#9\tcaf\xe9 bad byte\n")
    with pytest.raises(UserError, match=r"Flickr8k.token.txt:36: not valid UTF-8"):
        load_flickr8k(root)
    root2 = make_flickr(tmp_path / "g")
    (root2 / "Flickr_8k.devImages.txt").write_text("nope.jpg\n")
    with pytest.raises(UserError, match=r"Flickr_8k.devImages.txt:1: split names unknown image nope.jpg"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_flickr8k(root2)


def test_flickr_missing_dir_and_corrupt_image(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_flickr8k(tmp_path / "nowhere")
    root = make_flickr(tmp_path / "f")
    (root / "Images" / "1002_abc.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_flickr8k(root)
    with pytest.raises(UserError, match="1002_abc.jpg: cannot read image"):
        data.load_image("1002_abc.jpg")


def test_shapes_is_deterministic_and_captions_name_every_slot():
    a = load_shapes(ShapesConfig(seed=5, train=20, dev=5, test=5))
    b = load_shapes(ShapesConfig(seed=5, train=20, dev=5, test=5))
    c = load_shapes(ShapesConfig(seed=6, train=20, dev=5, test=5))
    assert a.captions == b.captions and a.labels == b.labels and a.captions != c.captions
    for image_id, caps in a.captions.items():
        label = a.labels[image_id]
        assert len(caps) == 5
        for cap in caps:  # every reference is fully correct under the slot parser
            assert all(v == 1.0 for v in slot_scores(cap, label).values()), (cap, label)
    img = np.asarray(render_shapes(a.labels[a.splits["train"][0]]))
    assert img.shape == (224, 224, 3) and img.std() > 0


def test_slot_scores_catch_wrong_relation_and_colour():
    label = {"objects": [{"colour": "red", "shape": "circle", "size": "small"},
                         {"colour": "blue", "shape": "square", "size": "large"}], "relation": "left of"}
    assert slot_scores("a small red circle left of a large blue square", label)["relation"] == 1.0
    assert slot_scores("a large blue square right of a small red circle", label)["relation"] == 1.0
    wrong = slot_scores("a small red circle right of a large blue square", label)
    assert wrong["relation"] == 0.0 and wrong["colour"] == 1.0
    assert slot_scores("a small green circle", label) == {"count": 0.0, "colour": 0.0, "shape": 0.5, "size": 0.5,
                                                          "relation": 0.0}
    assert parse_shapes_caption("") == ([], None)


def test_normalize_caption():
    assert normalize_caption("  A Dog  runs .") == "a dog runs"


def test_feature_cache_hit_and_partial_file_ignored(tmp_path, effnet):
    from vlm_core.features import cached_features, feature_path

    data = load_shapes(ShapesConfig(seed=1, train=6, dev=2, test=2))
    logs = []
    first = cached_features(effnet, data, "train", tmp_path, batch_size=4, log=logs.append)
    assert not first.cache_hit and first.array.shape == (6, 49, 1280) and first.array.dtype == np.float16
    second = cached_features(effnet, data, "train", tmp_path, log=logs.append)
    assert second.cache_hit and "cache hit" in logs[-1]
    assert np.array_equal(np.asarray(first.array), np.asarray(second.array))
    # A half-written file from a killed build never counts as the cache.
    path = feature_path(tmp_path, effnet, data, "dev")
    path.with_name(f".{path.name}.999.partial").write_bytes(b"junk")
    third = cached_features(effnet, data, "dev", tmp_path, log=logs.append)
    assert not third.cache_hit and third.array.shape == (2, 49, 1280)


def test_feature_cache_serves_a_prefix_of_a_larger_cache(tmp_path, effnet):
    """data.train_images / eval_images take the first N rows of a full-split cache instead of re-encoding."""
    from vlm_core.features import cached_features

    data = load_shapes(ShapesConfig(seed=1, train=6, dev=2, test=2))
    full = cached_features(effnet, data, "train", tmp_path, batch_size=4, log=lambda *_: None)
    data.splits["train"] = data.splits["train"][:4]
    logs = []
    part = cached_features(effnet, data, "train", tmp_path, log=logs.append)
    assert part.cache_hit and "first 4 images" in logs[-1]
    assert part.ids == full.ids[:4] and np.array_equal(np.asarray(part.array), np.asarray(full.array[:4]))
    # A different image list (not a prefix) is encoded anew.
    data.splits["train"] = full.ids[1:3]
    other = cached_features(effnet, data, "train", tmp_path, log=lambda *_: None)
    assert not other.cache_hit and other.array.shape == (2, 49, 1280)
    assert np.allclose(np.asarray(other.array, dtype=np.float32), np.asarray(full.array[1:3], dtype=np.float32), atol=1e-2)


def test_efficientnet_lite2_gives_a_finer_grid_at_its_own_input_size():
    from vlm_core.vision import load_vision_backbone

    lite2 = load_vision_backbone("efficientnet-lite2")
    assert (lite2.image_size, lite2.grid, lite2.num_tokens, lite2.feature_dim) == (260, (9, 9), 81, 1280)
    images = [Image.new("RGB", (224, 224), (200, 30, 30)), Image.new("RGB", (224, 224), (30, 30, 200))]
    tokens = lite2.encode_images(images)  # 224-px images are resized to 260 first
    assert tokens.shape == (2, 81, 1280)
    assert not any(p.requires_grad for p in lite2.model.parameters())  # frozen
    assert (tokens[0] - tokens[1]).abs().mean() > 1e-3  # the image reaches the tokens


def test_efficientnet_lite0_s16_gives_the_stride_16_stage_as_tokens():
    """The earlier-stage backbone is the network cut after its last stride-16 block: same pixels, a 14x14 grid."""
    from vlm_core.vision import _stem_and_blocks, load_vision_backbone

    s16 = load_vision_backbone("efficientnet-lite0-s16")
    assert (s16.image_size, s16.grid, s16.num_tokens, s16.feature_dim) == (224, (14, 14), 196, 112)
    images = [Image.new("RGB", (224, 224), (200, 30, 30)), Image.new("RGB", (224, 224), (30, 30, 200))]
    tokens = s16.encode_images(images)
    assert tokens.shape == (2, 196, 112)
    assert (tokens[0] - tokens[1]).abs().mean() > 1e-3  # the image reaches the tokens
    one_more = _stem_and_blocks(s16.model, s16.preprocess(images), s16.blocks + 1)
    assert one_more.shape[-1] == 7  # the next block leaves stride 16: the cut is the last stride-16 block
    assert not any(p.requires_grad for p in s16.model.parameters())
    lite2 = load_vision_backbone("efficientnet-lite2-s16")  # the cut is found per model, not hard-coded
    assert (lite2.image_size, lite2.grid, lite2.num_tokens, lite2.feature_dim) == (260, (17, 17), 289, 120)
