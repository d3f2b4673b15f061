"""Decoding rules beyond beam search (consensus reranking, length penalty) and label smoothing."""
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm_core.errors import UserError
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.rerank import consensus_choice
from vlm_core.decoding import decode
from vlm_core.train import TrainConfig
from vlm_core.vision import tiny_random_clip

from .micro import spy_on


def test_consensus_keeps_the_candidate_the_others_agree_with():
    candidates = [
        ["a red car parked on a street", "a dog runs on the grass", "a brown dog runs on the grass",
         "the dog runs across the grass"],
        ["two men play football", "a man plays football", "a woman sings on a stage"],
        ["only one candidate"],
    ]
    picks = consensus_choice(candidates)
    # the most likely (first) candidate of image 0 shares no words with the others: it must lose
    assert picks[0] == 1, picks
    assert candidates[1][picks[1]] != "a woman sings on a stage"
    assert picks[2] == 0


def test_consensus_ties_keep_the_likelier_candidate():
    assert consensus_choice([["a dog", "a dog", "a dog"]]) == [0]


def _model(gpt2_tiny):
    vision = tiny_random_clip()
    torch.manual_seed(0)
    cfg = CaptionModelConfig(num_queries=4, qformer_hidden=32, qformer_layers=1, qformer_heads=2,
                             qformer_intermediate=64, qformer_dropout=0.0)
    images = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 200)),
              Image.new("RGB", (40, 40), (20, 200, 30))]
    return CaptionModel(cfg, gpt2_tiny, vision.feature_dim, vision.grid).eval(), vision.encode_images(images)


def test_consensus_decoding_returns_one_of_the_beams_for_each_image(gpt2_tiny, monkeypatch):
    model, feats = _model(gpt2_tiny)
    decoding = TrainConfig(num_beams=4, max_new_tokens=6, rerank="consensus").decoding()
    beams = model.generate(feats, max_new_tokens=6, num_beams=4, num_return_sequences=4)
    assert len(beams) == 3 * 4
    seen, _ = spy_on(monkeypatch, CaptionModel, "generate")
    texts, firsts = decode(model, feats, decoding)
    assert seen[-1]["num_return_sequences"] == 4 and len(texts) == len(firsts) == 3
    picks = consensus_choice([beams[i : i + 4] for i in range(0, 12, 4)])
    assert texts == [beams[j * 4 + p] for j, p in enumerate(picks)]
    top = decode(model, feats, TrainConfig(num_beams=4, max_new_tokens=6).decoding())[0]
    assert top == beams[::4]  # without reranking: the first (best) beam of each image


def test_length_penalty_reaches_beam_search(gpt2_tiny, monkeypatch):
    model, feats = _model(gpt2_tiny)
    calls, _ = spy_on(monkeypatch, model.lm, "generate")
    decode(model, feats, TrainConfig(num_beams=3, max_new_tokens=4, length_penalty=1.7).decoding())
    assert calls[-1]["length_penalty"] == 1.7 and calls[-1]["num_beams"] == 3
    decode(model, feats, TrainConfig(num_beams=3, max_new_tokens=4).decoding())
    assert "length_penalty" not in calls[-1] and "num_return_sequences" not in calls[-1]  # defaults: the old call


def test_label_smoothing_is_the_smoothed_cross_entropy(gpt2_tiny):
    model, feats = _model(gpt2_tiny)
    captions = ["a dog runs", "a red ball on the grass", "two cats"]
    plain = float(model(feats, captions))
    smooth = float(model(feats, captions, label_smoothing=0.2))
    ids, mask, labels = model.encode_captions(captions)
    logits, targets, _ = model._target_logits(feats, ids, mask, labels)
    logp = F.log_softmax(logits.float(), -1)
    uniform = float(-logp.mean(-1).mean())
    assert math.isclose(smooth, 0.8 * plain + 0.2 * uniform, rel_tol=1e-5)
    assert smooth != pytest.approx(plain)


@pytest.mark.parametrize("bad, message", [
    (dict(rerank="mbr"), "train.rerank"),
    (dict(rerank="consensus", num_beams=1), "num_beams >= 2"),
    (dict(label_smoothing=1.0), "train.label_smoothing"),
    (dict(num_beams=3, rerank_samples=8), "only with train.rerank"),
    (dict(num_beams=1, length_penalty=1.5), "only in beam search"),
])
def test_bad_decoding_settings_name_the_key(bad, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**bad)


def test_consensus_against_sampled_evidence_prefers_what_the_samples_say():
    # n-gram weights come from the evidence of every image: a batch needs more than one image
    candidates = [["a red car on a street", "a dog runs on the grass"], ["a man rides a bike", "a girl swims"],
                  ["a cat sleeps", "two cats sleep"]]
    evidence = [["a dog runs on grass", "the dog runs on the grass", "a black dog runs"],
                ["a man on a bike", "a man rides a red bike"], []]
    assert consensus_choice(candidates, evidence) == [1, 0, 0]  # no evidence (image 2): the top beam


def test_sampled_evidence_is_drawn_per_image_and_repeatable(gpt2_tiny, monkeypatch):
    from vlm_core.features import FeatureSet
    from vlm_core.decoding import generate_captions

    model, feats = _model(gpt2_tiny)
    _, samples = spy_on(monkeypatch, CaptionModel, "sample")
    fs = FeatureSet(["a", "b", "c"], feats.numpy(), None, True, 0.0)
    decoding = TrainConfig(num_beams=3, max_new_tokens=5, rerank="consensus", rerank_samples=4).decoding()
    first = generate_captions(model, fs, decoding)
    second = generate_captions(model, fs, decoding)
    assert len(samples[0]) == 3 * 4 and samples[0] == samples[1] and first == second
    # the evidence handed to the reranker is each image's own four samples, in the order sample() returns them
    import vlm_core.rerank as rerank_module

    handed = []
    real_choice = rerank_module.consensus_choice
    monkeypatch.setattr(rerank_module, "consensus_choice", lambda c, e=None: handed.append((c, e)) or real_choice(c, e))
    generate_captions(model, fs, decoding)
    candidates, evidence = handed[-1]
    assert evidence == [samples[-1][j * 4 : (j + 1) * 4] for j in range(3)] and len(candidates) == 3


def test_decoding_keys_at_their_defaults_keep_earlier_runs_current():
    from dataclasses import asdict

    from ablations.run.identity import HASHED_KEYS, config_hash

    train = asdict(TrainConfig(num_beams=3))
    before = {k: v for k, v in train.items() if k in HASHED_KEYS["train"]}  # a run made before the keys
    assert config_hash({"train": train, "seed": 0}) == config_hash({"train": before, "seed": 0})
    for key, value in (("rerank", "consensus"), ("label_smoothing", 0.1), ("length_penalty", 1.5),
                       ("rerank_samples", 8), ("rerank_temperature", 0.7), ("scst_epochs", 2),
                       ("length_grouped", True), ("dev_checks", 4)):
        assert config_hash({"train": {**train, key: value}, "seed": 0}) != config_hash({"train": before, "seed": 0})
    scst = {**train, "scst_epochs": 2}  # its samples / rate act only with scst_epochs, and enter the hash then
    for key, value in (("scst_samples", 8), ("scst_lr", 3e-4), ("scst_baseline", "greedy")):
        assert config_hash({"train": {**scst, key: value}, "seed": 0}) != config_hash({"train": scst, "seed": 0})
        # with self-critical epochs on, even their default values are part of what made the run
        without = {k: v for k, v in scst.items() if k != key}
        assert config_hash({"train": scst, "seed": 0}) != config_hash({"train": without, "seed": 0})
