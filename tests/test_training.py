"""Training behaviour on real EfficientNet features of `shapes`: overfit, seed-recipe collapse, probes."""
import numpy as np
import pytest
import torch

from ablations.measure import probes
from vlm_core.data import CaptionData
from vlm_core.features import cached_features
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.decoding import generate_captions
from vlm_core.train import TrainConfig, train_model

SMALL_MODEL = dict(num_queries=4, qformer_hidden=64, qformer_layers=1, qformer_heads=2, qformer_intermediate=128,
                   qformer_dropout=0.0, lora_rank=8)


@pytest.fixture(scope="module")
def feats(shapes_small, effnet, cache_dir):
    return {s: cached_features(effnet, shapes_small, s, cache_dir, log=lambda *_: None) for s in ("train", "dev")}


def _one_caption(data: CaptionData, n: int) -> CaptionData:
    """The first n training images with only their first reference: a target the model can memorise."""
    ids = data.splits["train"][:n]
    return CaptionData(data.name, {i: data.captions[i][:1] for i in ids}, {"train": ids, "dev": ids},
                       labels={i: data.labels[i] for i in ids})


def _subset(feats, n):
    from vlm_core.features import FeatureSet

    f = feats["train"]
    return FeatureSet(f.ids[:n], np.asarray(f.array[:n]), f.path, True, 0.0)


def test_full_model_overfits_32_images(shapes_small, feats, caption_lm):
    """Near-zero loss needs an adapter on the LM head too: with the tied output layer and the final
    LayerNorm frozen, this small LM's logit scale caps confidence (measured floor ~0.18 nats/token)."""
    data = _one_caption(shapes_small, 32)
    sub = _subset(feats, 32)
    final = {}
    for name, targets in (("attention+mlp", []), ("attention+mlp+head", ["c_attn", "c_proj", "lm_head"])):
        torch.manual_seed(0)
        model = CaptionModel(CaptionModelConfig(**SMALL_MODEL, lora_targets=targets), caption_lm, 1280, (7, 7))
        history = train_model(model, data, sub, sub, TrainConfig(epochs=120, batch_size=16, lr=3e-3, dev_images=32),
                              seed=0, log=lambda *_: None)
        final[name] = history[-1]["train_loss"]
        caps = generate_captions(model, sub, TrainConfig(max_new_tokens=20).decoding())
        exact = np.mean([c == data.captions[i][0] for c, i in zip(caps, sub.ids)])
        assert exact >= 0.9, (name, list(zip(caps, sub.ids))[:5])
        assert history[-1]["train_loss"] < history[0]["train_loss"] / 4, (name, history[-1])
    assert final["attention+mlp+head"] < 0.02, final  # near zero
    assert final["attention+mlp"] > 5 * final["attention+mlp+head"], final  # the frozen head was the floor


def test_seed_recipe_collapses_to_empty_captions(shapes_small, feats, caption_lm):
    torch.manual_seed(0)
    model = CaptionModel(CaptionModelConfig(**SMALL_MODEL, recipe="seed", seed_pad_length=32), caption_lm, 1280, (7, 7))
    train_model(model, shapes_small, feats["train"], feats["dev"], TrainConfig(epochs=4, batch_size=16, lr=3e-3),
                seed=0, log=lambda *_: None)
    caps, first = generate_captions(model, feats["dev"], TrainConfig(max_new_tokens=20).decoding(), with_first_token=True)
    assert np.mean([c == "" for c in caps]) >= 0.9, caps[:5]
    d = probes.degeneracy(caps, first, model.eos_id)
    assert d["empty_rate"] >= 0.9 and d["eos_first_rate"] >= 0.9


def test_probes_see_a_model_that_ignores_the_image(shapes_small, feats, caption_lm):
    from ablations.measure.scoring import tokenize

    torch.manual_seed(0)
    model = CaptionModel(CaptionModelConfig(**SMALL_MODEL, blind=True), caption_lm, 1280, (7, 7))
    f = feats["dev"]
    caps = generate_captions(model, f, TrainConfig(max_new_tokens=12).decoding())
    perm = probes.derangement(len(f.ids), 0)
    assert all(p != i for i, p in enumerate(perm)) and sorted(perm) == list(range(len(perm)))
    refs = {i: shapes_small.captions[i] for i in f.ids}
    gts, res = tokenize(refs, dict(zip(f.ids, caps)))
    swap = probes.generation_swap(caps, [res[i][0] for i in f.ids], perm)
    assert swap["swap_rate"] <= 0.05
    assert abs(probes.perceptual_score(gts, res, f.ids, perm)["perceptual_score"]) <= 0.05
    like = probes.likelihood_swap(model, f.batch(list(range(len(f.ids)))), [refs[i] for i in f.ids], perm)
    assert abs(like["nll_gap"]) < 1e-5 and like["nll_gap_p"] == 1.0


def test_probes_see_a_model_that_uses_the_image(shapes_small, feats):
    """Counter-check: captions that do differ per image give a high swap rate."""
    caps = [f"caption {i}" for i in range(len(feats["dev"].ids))]
    swap = probes.generation_swap(caps, caps, probes.derangement(len(caps), 0))
    assert swap["swap_rate"] == 1.0
    d = probes.degeneracy(["a b", "a b", "c d e"], [5, 5, 2], eos_id=2)
    assert d["unique_share"] == pytest.approx(2 / 3) and d["top_caption"] == "a b"
    assert d["eos_first_rate"] == pytest.approx(1 / 3) and d["distinct_1"] == pytest.approx(5 / 7)


def test_connector_lr_sets_the_image_path_rate_apart_from_the_adapters(shapes_small, feats, caption_lm):
    data = _one_caption(shapes_small, 16)
    sub = _subset(feats, 16)
    moved = {}
    for connector_lr in (1e-9, 0.0):  # 0: the same rate as the adapters
        torch.manual_seed(0)
        model = CaptionModel(CaptionModelConfig(**SMALL_MODEL), caption_lm, 1280, (7, 7))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        train_model(model, data, sub, sub, TrainConfig(epochs=1, batch_size=8, lr=3e-3, connector_lr=connector_lr,
                                                       dev_images=4), seed=0, log=lambda *_: None)
        after = dict(model.named_parameters())
        moved[connector_lr] = {
            part: max(float((after[n] - before[n]).abs().max()) for n in before if pick(n))
            for part, pick in (("image path", lambda n: not n.startswith("lm.")), ("lora", lambda n: "lora_" in n))}
    assert moved[1e-9]["image path"] < 1e-6 and moved[1e-9]["lora"] > 1e-4, moved
    assert moved[0.0]["image path"] > 1e-4, moved


def _lengths_data(n: int = 1000, refs: int = 5) -> tuple[CaptionData, list[str]]:
    """Images whose references have 1-30 words, at random: what length grouping has to sort."""
    import random

    rng = random.Random(7)
    ids = [f"img{i}" for i in range(n)]
    captions = {i: [" ".join(["word"] * rng.randint(1, 30)) + f" {i} {j}" for j in range(refs)] for i in ids}
    return CaptionData("lengths", captions, {"train": ids}), ids


@pytest.mark.parametrize("per_image", [1, 2])
def test_length_grouped_batches_cover_every_image_once_with_its_own_captions(per_image):
    import random

    from vlm_core.train import _image_batches

    data, ids = _lengths_data(1000)
    batches = list(_image_batches(data, ids, per_image, 16, random.Random(0), length_grouped=True))
    rows = [r for rs, _ in batches for r in rs]
    assert sorted(rows) == list(range(len(ids)))  # every image exactly once per epoch
    assert sum(len(rs) < 16 for rs, _ in batches) <= 2  # only a group's last batch may be short (1000 = 800 + 200)
    for rs, caps in batches:
        assert len(caps) == per_image * len(rs)
        for k, r in enumerate(rs):  # an image's captions follow it, and are its own references
            assert all(c in data.captions[ids[r]] for c in caps[k * per_image : (k + 1) * per_image])


def test_length_grouping_cuts_padding_and_keeps_the_default_order():
    import random

    from vlm_core.train import _image_batches

    data, ids = _lengths_data(800)  # one group of 50 batches: unshuffled, its lengths would only rise

    def padded_words(batches):  # what a batch padded to its longest caption costs
        return sum(max(len(c.split()) for c in caps) * len(caps) for _, caps in batches)

    plain = list(_image_batches(data, ids, 1, 16, random.Random(0)))
    grouped = list(_image_batches(data, ids, 1, 16, random.Random(0), length_grouped=True))
    real = sum(len(c.split()) for _, caps in plain for c in caps)
    assert padded_words(grouped) < real * 1.1 < padded_words(plain) * 0.75
    # the default is the order earlier runs were trained in (the loop as it was before length grouping)
    rng, order, before = random.Random(0), list(range(len(ids))), []
    rng.shuffle(order)
    for i in range(0, len(order), 16):
        rows = order[i : i + 16]
        before.append((rows, [c for r in rows for c in [data.captions[ids[r]][j % 5] for j in rng.sample(range(5), 1)]]))
    assert plain == before
    # the batch order is shuffled, not longest-last: neighbouring batches are not sorted by length
    longest = [max(len(c.split()) for c in caps) for _, caps in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_train_model_uses_length_grouped_batches_when_set(monkeypatch, shapes_small, feats, caption_lm):
    import vlm_core.train as train_module

    seen = []
    real = train_module._image_batches

    def spy(*args, **kwargs):
        seen.append((args[5], args[6]))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "_image_batches", spy)
    data, sub = _one_caption(shapes_small, 8), _subset(feats, 8)
    for grouped in (False, True):
        torch.manual_seed(0)
        model = CaptionModel(CaptionModelConfig(**SMALL_MODEL), caption_lm, 1280, (7, 7))
        train_model(model, data, sub, sub, TrainConfig(epochs=1, batch_size=4, dev_images=4, length_grouped=grouped),
                    seed=0, log=lambda *_: None)
    assert [grouped for grouped, _ in seen] == [False, True]
    # batches are grouped by what they are padded by: the caption's tokens between BOS and EOS
    length = seen[-1][1]
    caps = ["a red square", "two xylophones, quizzically zigzagging!"]  # the second: more tokens than words
    _, mask, _ = model.text.encode(caps)
    assert [length(c) for c in caps] == (mask.sum(1) - 2).tolist() and length(caps[1]) > len(caps[1].split())


def test_dev_checks_add_history_rows_inside_the_epoch_without_changing_the_training(shapes_small, feats, caption_lm):
    """Dev checks only measure: the weights after the epoch are those of a run without them, and the rows at
    1/3 and 2/3 of the epoch split its steps (their train losses average to the plain epoch's)."""
    data, sub = _one_caption(shapes_small, 12), _subset(feats, 12)
    runs = {}
    for checks in (0, 2):
        torch.manual_seed(0)
        model = CaptionModel(CaptionModelConfig(**SMALL_MODEL), caption_lm, 1280, (7, 7))
        history = train_model(model, data, sub, sub, TrainConfig(epochs=1, batch_size=2, dev_images=4, dev_checks=checks),
                              seed=0, log=lambda *_: None)
        runs[checks] = (history, [p.detach().clone() for p in model.parameters() if p.requires_grad])
    plain, checked = runs[0][0], runs[2][0]
    assert [row["epoch"] for row in plain] == [1] and [row["epoch"] for row in checked] == [0.3333, 0.6667, 1]
    assert checked[-1]["dev_loss"] == pytest.approx(plain[-1]["dev_loss"], abs=1e-6)
    assert np.mean([row["train_loss"] for row in checked]) == pytest.approx(plain[0]["train_loss"], abs=1e-6)  # 2 steps each
    for a, b in zip(runs[0][1], runs[2][1]):
        torch.testing.assert_close(a, b)
