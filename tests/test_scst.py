"""Self-critical training: its CIDEr-D reward, the direction of its update, and the phase in a real run."""
import random

import numpy as np
import pytest
import torch
from PIL import Image
from pycocoevalcap.cider.cider import Cider

from vlm_core.cider import CiderD
from vlm_core.data import CaptionData
from vlm_core.errors import UserError
from vlm_core.features import FeatureSet
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.train import TrainConfig, self_critical
from vlm_core.vision import tiny_random_clip


def _random_split(seed: int):
    rng = random.Random(seed)
    vocab = "a dog runs on the grass man in red shirt two kids play with ball near water beach".split()
    sentence = lambda lo, hi: " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))
    gts = {f"img{i}": [sentence(3, 12) for _ in range(5)] for i in range(30)}
    return gts, {key: [sentence(1, 12)] for key in gts}


@pytest.mark.parametrize("seed", [0, 1])
def test_cider_d_on_a_split_s_own_references_is_pycocoevalcap_s(seed):
    gts, res = _random_split(seed)
    _, library = Cider().compute_score(gts, res)
    scorer = CiderD(gts)
    ours = np.array([scorer.score(key, res[key][0]) for key in gts])
    assert np.allclose(ours, library, rtol=0, atol=1e-12), np.abs(ours - library).max()
    assert library.std() > 0  # the captions differ in quality: the comparison is not of constants


def test_cider_d_weights_come_from_its_corpus():
    gts, _ = _random_split(2)
    alone = CiderD({"img0": gts["img0"]})  # one image: every n-gram has idf 0
    assert alone.score("img0", gts["img0"][0]) == 0.0
    scorer = CiderD(gts)
    assert scorer.score("img0", gts["img0"][0]) > scorer.score("img0", gts["img1"][0]) > -1
    fewer = CiderD({k: gts[k] for k in list(gts)[:10]})  # the same references, other weights
    assert fewer.score("img0", gts["img0"][0]) != scorer.score("img0", gts["img0"][0])


def _two_image_setup(gpt2_tiny):
    vision = tiny_random_clip()
    torch.manual_seed(0)
    cfg = CaptionModelConfig(num_queries=2, qformer_hidden=32, qformer_layers=1, qformer_heads=2,
                             qformer_intermediate=64, qformer_dropout=0.0, lora_rank=4, lora_dropout=0.5)
    model = CaptionModel(cfg, gpt2_tiny, vision.feature_dim, vision.grid).eval()
    feats = vision.encode_images([Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 200))])
    ids = ["red.jpg", "blue.jpg"]
    refs = {"red.jpg": ["a red square on the left", "a red square"], "blue.jpg": ["a blue circle at the top", "a blue circle"]}
    data = CaptionData("two", refs, {"train": ids, "dev": ids, "test": ids})
    array = feats.numpy().astype(np.float16)
    return model, data, FeatureSet(ids, array, None, True, 0.0), torch.from_numpy(array).float()


def _token_rows(model, captions, ended=True):
    return [model.tokenizer(c, add_special_tokens=False).input_ids + ([model.eos_id] if ended else []) for c in captions]


def test_generated_nll_is_of_the_ids_as_sampled(gpt2_tiny):
    model, _, _, x = _two_image_setup(gpt2_tiny)
    captions = ["a red square", "a blue circle"]
    ended = model.generated_nll_sums(x, _token_rows(model, captions))
    # an ended sample is a caption with its EOS: the same sum as the caption's NLL over its targets
    per_token = model.caption_nll(x, captions)
    counts = torch.tensor([len(r) for r in _token_rows(model, captions)], dtype=torch.float32)
    assert torch.allclose(ended.detach().cpu(), per_token * counts, atol=1e-5)
    # a sample cut at max_new_tokens has no EOS target: its sum is smaller by exactly the EOS term
    cut = model.generated_nll_sums(x, _token_rows(model, captions, ended=False))
    assert torch.all(cut < ended) and ended.requires_grad


def test_self_critical_makes_the_better_sample_likelier_and_the_worse_less_likely(gpt2_tiny, monkeypatch):
    model, data, feats, x = _two_image_setup(gpt2_tiny)
    # each image's bad sample is the other image's good caption: a sample scored against the wrong image's
    # references, or weighed under the wrong image's visual tokens, would flip the direction of the update
    good = {"red.jpg": "a red square", "blue.jpg": "a blue circle"}
    bad = {"red.jpg": "a blue circle", "blue.jpg": "a red square"}
    seen, corpora = [], []

    def fixed_samples(features, max_new_tokens, num_samples, temperature=1.0):
        # sample_with_ids returns image 0's samples first; which image a row is, is read from its features
        keys = [next(k for r, k in zip(x, data.splits["train"]) if torch.equal(r, f)) for f in features.float()]
        seen.append(keys)
        texts = [c for k in keys for c in (good[k], bad[k])]
        return texts, _token_rows(model, texts)

    class RecordedCiderD(CiderD):
        def __init__(self, references, **kw):
            corpora.append(sorted(references))
            super().__init__(references, **kw)

    monkeypatch.setattr(model, "sample_with_ids", fixed_samples)
    monkeypatch.setattr("vlm_core.train.CiderD", RecordedCiderD)
    train = data.splits["train"]
    before_good, before_bad = model.caption_nll(x, [good[k] for k in train]), model.caption_nll(x, [bad[k] for k in train])
    cfg = TrainConfig(epochs=1, batch_size=1, dev_images=2, max_new_tokens=6, scst_epochs=3, scst_samples=2, scst_lr=1e-2)
    history = self_critical(model, data, feats, feats, cfg, random.Random(0), log=lambda *_: None)
    after_good, after_bad = model.caption_nll(x, [good[k] for k in train]), model.caption_nll(x, [bad[k] for k in train])
    assert corpora == [sorted(train)]  # one reward, its n-gram weights from all training images, not per batch
    assert len(seen) == 6 and all(len(s) == 1 for s in seen) and sorted(sum(seen[:2], [])) == sorted(train)
    # the shared LM learns both captions somewhat (each is the other image's good one); what must grow,
    # image by image, is how much likelier the good caption is than the bad one
    assert torch.all(after_bad - after_good > before_bad - before_good + 0.1), (before_good, before_bad, after_good, after_bad)
    assert torch.all(after_good < before_good), (before_good, after_good)
    assert [h["phase"] for h in history] == ["scst"] * 3 and [h["epoch"] for h in history] == [2, 3, 4]
    assert all(h["reward"] > 0 and np.isfinite(h["dev_loss"]) for h in history)


@pytest.mark.parametrize("settings, message", [
    (dict(scst_epochs=-1), "scst_epochs"),
    (dict(scst_epochs=1, scst_samples=1), "scst_samples >= 2"),
    (dict(scst_epochs=1, scst_lr=0.0), "scst_lr > 0"),
    (dict(scst_lr=3e-4), "only with train.scst_epochs"),
    (dict(scst_samples=8), "only with train.scst_epochs"),
    (dict(scst_baseline="greedy"), "only with train.scst_epochs"),
    (dict(scst_epochs=1, scst_baseline="beam"), "train.scst_baseline"),
    (dict(scst_candidates="beam"), "only with train.scst_epochs"),
    (dict(scst_epochs=1, scst_candidates="top-k"), "train.scst_candidates"),
    (dict(scst_epochs=1, scst_candidates="beam", scst_baseline="greedy", scst_samples=1), "beam width"),
])
def test_self_critical_settings_that_cannot_act_are_errors(settings, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**settings)


def test_a_table_with_self_critical_epochs_runs_records_them_and_reports_them(tmp_path):
    import json

    from typer.testing import CliRunner

    from ablations.cli import app

    from .micro import write_micro

    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full", "meanpool"),
                        extra="").read_text().replace("max_new_tokens = 8\n", "max_new_tokens = 8\nscst_epochs = 2\nscst_samples = 3\nscst_lr = 0.05\n")  # a large rate: captions change
    (tmp_path / "micro.toml").write_text(table)
    runner, runs = CliRunner(), tmp_path / "runs"
    result = runner.invoke(app, ["run-all", str(tmp_path / "micro.toml"), "--runs-dir", str(runs),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    history = json.loads((runs / "micro" / "full" / "seed-0" / "history.json").read_text())
    assert [h.get("phase", "xe") for h in history] == ["xe", "xe", "scst", "scst"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert "train_loss" not in history[2] and all(np.isfinite(h["reward"]) for h in history[2:])
    # the cross-entropy model is kept beside the final one, and they differ by the self-critical updates
    from ablations.run.trained import load_run_model
    run = runs / "micro" / "full" / "seed-0"
    final, _ = load_run_model(run, tmp_path / "cache")
    xe, _ = load_run_model(run, tmp_path / "cache", weights="xe")
    trained = lambda m: {k: v for k, v in m.named_parameters() if v.requires_grad}
    assert trained(final).keys() == trained(xe).keys() and trained(final)
    assert any(not torch.equal(v, trained(xe)[k]) for k, v in trained(final).items())
    # saved at the right moments: each gives the dev loss the history logged after its last epoch
    from ablations.run.runner import prepare
    from ablations.tables import load_table
    from vlm_core.train import _dev_loss_images, dev_loss
    workspace = prepare(load_table(tmp_path / "micro.toml"), tmp_path / "cache", log=lambda *_: None)
    cfg = TrainConfig(**json.loads((run / "config.json").read_text())["train"])
    dev_x, dev_ids = _dev_loss_images(workspace.features["dev"], cfg)
    for model, logged in ((xe, history[1]["dev_loss"]), (final, history[3]["dev_loss"])):
        assert dev_loss(model, dev_x, workspace.data, dev_ids, cfg.batch_size) == pytest.approx(logged, abs=1e-4)
    # the cross-entropy model is also scored on the eval split, like the final one
    from ablations.run.runner import score_stage
    from vlm_core.decoding import generate_captions
    metrics = json.loads((run / "metrics.json").read_text())
    feats = workspace.features[workspace.table.data.eval_split]
    from ablations.measure.scoring import chosen_metrics
    xe_captions = dict(zip(feats.ids, generate_captions(xe, feats, cfg.decoding())))
    xe_scores = score_stage(workspace.data.captions, xe_captions, chosen_metrics(()), 0, swap_probes=False).metrics
    assert metrics["metrics_xe"] == pytest.approx(xe_scores)
    assert metrics["metrics_xe"] != pytest.approx(metrics["metrics"])  # so the check can tell the two models apart
    with pytest.raises(UserError, match="weights must be"):
        load_run_model(run, tmp_path / "cache", weights="best")
    result = runner.invoke(app, ["report", str(tmp_path / "micro.toml"), "--runs-dir", str(runs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "micro" / "README.md").read_text()
    rewards = " → ".join(f"{h['reward']:.3f}" for h in history[2:])
    assert f"| full | {rewards} |" in report, report
    section = report[report.index("## Loss per epoch"):]
    loss_row = next(line for line in section.splitlines() if line.startswith("| full |"))  # the cross-entropy table
    assert loss_row.count("→") == 2 and "nan" not in loss_row, loss_row  # its 2 epochs, train and dev
    m = metrics
    assert (f"| full | 0 | {m['metrics_xe']['BLEU-4']:.3f} → {m['metrics']['BLEU-4']:.3f} | "
            f"{m['metrics_xe']['CIDEr']:.3f} → {m['metrics']['CIDEr']:.3f} |") in report, report


def test_a_greedy_baseline_needs_only_one_sample():
    assert TrainConfig(scst_epochs=1, scst_samples=1, scst_baseline="greedy").scst_samples == 1


def test_a_greedy_baseline_weighs_each_sample_by_its_reward_minus_the_greedy_captions(gpt2_tiny, monkeypatch):
    model, data, feats, x = _two_image_setup(gpt2_tiny)
    train = data.splits["train"]
    samples = {"red.jpg": ["a red square", "a blue circle", "a square"], "blue.jpg": ["a blue circle", "a circle", "two kids"]}
    greedy = {"red.jpg": "a square on the left", "blue.jpg": "a red square"}
    key_of = lambda features: [next(k for r, k in zip(x, train) if torch.equal(r, f)) for f in features.float()]
    weights, calls = [], []

    def fixed_samples(features, max_new_tokens, num_samples, temperature=1.0):
        texts = [c for k in key_of(features) for c in samples[k]]
        return texts, _token_rows(model, texts)

    def greedy_captions(features, max_new_tokens, **options):
        calls.append(options)
        return [greedy[k] for k in key_of(features)]

    def nll_leaf(features, generated, repeats=1):  # d loss / d nll = each sample's weight / number of samples
        leaf = torch.ones(len(generated), requires_grad=True)
        weights.append((key_of(features), leaf))
        return leaf

    monkeypatch.setattr(model, "sample_with_ids", fixed_samples)
    monkeypatch.setattr(model, "generate", greedy_captions)
    monkeypatch.setattr(model, "generated_nll_sums", nll_leaf)
    cfg = TrainConfig(epochs=1, batch_size=2, dev_images=2, max_new_tokens=6, scst_epochs=1, scst_samples=3,
                      scst_lr=1e-3, scst_baseline="greedy")
    self_critical(model, data, feats, feats, cfg, random.Random(0), log=lambda *_: None)
    reward = CiderD(data.captions)
    (keys, leaf), = weights
    expected = [reward.score(k, c) - reward.score(k, greedy[k]) for k in keys for c in samples[k]]
    assert calls == [{}]  # plain greedy decoding, once for the batch
    assert np.allclose(leaf.grad.numpy() * len(expected), expected, atol=1e-6), (leaf.grad, expected)
    assert min(expected) < 0 < max(expected)


def test_scst_images_draws_that_many_training_images_each_epoch(gpt2_tiny, monkeypatch):
    """A self-critical epoch on a share of the images (what makes it affordable with a large LM): each epoch
    trains on scst_images of them, a fresh seeded draw, and the progress total counts only those steps."""
    model, data, feats, x = _two_image_setup(gpt2_tiny)
    seen = []

    def fixed_samples(features, max_new_tokens, num_samples, temperature=1.0):
        keys = [next(k for r, k in zip(x, data.splits["train"]) if torch.equal(r, f)) for f in features.float()]
        seen.append(keys)
        texts = [c for k in keys for c in ("a red square", "a blue circle")]
        return texts, _token_rows(model, texts)

    monkeypatch.setattr(model, "sample_with_ids", fixed_samples)
    totals = []
    cfg = TrainConfig(epochs=1, batch_size=1, dev_images=2, max_new_tokens=6, scst_epochs=6, scst_samples=2,
                      scst_lr=1e-3, scst_images=1)
    self_critical(model, data, feats, feats, cfg, random.Random(0), log=lambda *_: None,
                  on_step=lambda step, total, loss: totals.append(total))
    assert [len(keys) for keys in seen] == [1] * 6  # one image an epoch, not both
    assert len({keys[0] for keys in seen}) == 2  # drawn afresh: both images appear over six epochs
    assert set(totals) == {6}
    with pytest.raises(UserError, match="scst_images"):
        TrainConfig(scst_epochs=1, scst_images=-1)
    with pytest.raises(UserError, match="only with train.scst_epochs"):
        TrainConfig(scst_images=100)


def test_beam_candidates_are_the_beams_that_decoding_chooses_among(gpt2_tiny):
    model, _, _, x = _two_image_setup(gpt2_tiny)
    texts, ids = model.beams_with_ids(x, max_new_tokens=6, num_beams=3, no_repeat_ngram_size=2)
    assert texts == model.generate(x, max_new_tokens=6, num_beams=3, no_repeat_ngram_size=2, num_return_sequences=3)
    assert len(ids) == 6 and len({tuple(r) for r in ids[:3]}) == 3  # image 0's three distinct beams first
    assert texts[:3] != texts[3:]  # the two images' beams differ, so the order below is tested
    # each row is the generated ids up to and including its EOS (or all 6 when none was generated)
    assert all((r[-1] == model.eos_id and model.eos_id not in r[:-1]) or (len(r) == 6 and model.eos_id not in r)
               for r in ids)
    assert model.generate(x, max_new_tokens=6, num_beams=3, no_repeat_ngram_size=2) == texts[::3]  # the top beam first


def test_beam_candidates_replace_samples_and_are_weighed_against_the_other_beams(gpt2_tiny, monkeypatch):
    model, data, feats, x = _two_image_setup(gpt2_tiny)
    train = data.splits["train"]
    beams = {"red.jpg": ["a red square", "a blue circle", "a square"], "blue.jpg": ["a blue circle", "a circle", "two kids"]}
    key_of = lambda features: [next(k for r, k in zip(x, train) if torch.equal(r, f)) for f in features.float()]
    weights, calls = [], []

    def fixed_beams(features, max_new_tokens, num_beams, no_repeat_ngram_size=0, length_penalty=1.0):
        calls.append((num_beams, no_repeat_ngram_size, length_penalty))
        texts = [c for k in key_of(features) for c in beams[k]]
        return texts, _token_rows(model, texts)

    def no_sampling(*args, **kwargs):
        raise AssertionError("beam candidates must not be sampled")

    def nll_leaf(features, generated, repeats=1):
        keys = key_of(features)
        assert generated == _token_rows(model, [c for k in keys for c in beams[k]]) and repeats == 3  # the beams' ids
        leaf = torch.ones(len(generated), requires_grad=True)
        weights.append((keys, leaf))
        return leaf

    monkeypatch.setattr(model, "beams_with_ids", fixed_beams)
    monkeypatch.setattr(model, "sample_with_ids", no_sampling)
    monkeypatch.setattr(model, "generated_nll_sums", nll_leaf)
    cfg = TrainConfig(epochs=1, batch_size=2, dev_images=2, max_new_tokens=6, no_repeat_ngram_size=3, num_beams=4,
                      length_penalty=1.5, scst_epochs=1, scst_samples=3, scst_lr=1e-3, scst_candidates="beam")
    self_critical(model, data, feats, feats, cfg, random.Random(0), log=lambda *_: None)
    reward = CiderD(data.captions)
    (keys, leaf), = weights
    expected = []
    for k in keys:
        r = [reward.score(k, c) for c in beams[k]]
        expected += [r[j] - (sum(r) - r[j]) / 2 for j in range(3)]  # each beam against the mean of the other two
    assert calls == [(3, 3, 1.5)]  # beam width = scst_samples, the table's n-gram blocking and length penalty
    assert np.allclose(leaf.grad.numpy() * len(expected), expected, atol=1e-6), (leaf.grad, expected)
    assert min(expected) < 0 < max(expected)


def test_beam_candidates_enter_the_run_hash_only_when_chosen():
    from dataclasses import asdict

    from ablations.run.identity import config_hash

    scst = asdict(TrainConfig(scst_epochs=2, scst_baseline="greedy"))
    before = {k: v for k, v in scst.items() if k != "scst_candidates"}  # a self-critical run made before the key
    assert config_hash({"train": scst, "seed": 0}) == config_hash({"train": before, "seed": 0})
    beam = {**scst, "scst_candidates": "beam"}
    assert config_hash({"train": beam, "seed": 0}) != config_hash({"train": scst, "seed": 0})


def test_a_run_without_self_critical_epochs_has_no_cross_entropy_copy(tmp_path):
    from typer.testing import CliRunner

    from ablations.cli import app
    from ablations.run.trained import load_run_model

    from .micro import write_micro

    table = write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",), extra="")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run-all", str(table), "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    run = runs / "micro" / "full" / "seed-0"
    assert (run / "weights").is_dir() and not (run / "weights-xe").exists()
    with pytest.raises(UserError, match="no weights-xe/"):
        load_run_model(run, tmp_path / "cache", weights="xe")
