"""The caption LM's packed pretraining: documents stay whole, [bos] is never a target, bad settings are errors."""
import hashlib
import json
import random
from dataclasses import asdict

import pytest
import torch

from vlm_core.caption_lm import (CaptionCorpus, CaptionLMConfig, _packed_batches, build_caption_lm, cache_key,
                                 initial_model)
from vlm_core.errors import UserError

BOS = 1


def _docs(copies: int = 1):
    """Documents of 1-3 captions; every token says which document it came from (10 * doc + k)."""
    sizes = [3, 1, 2, 3, 2] * copies
    ids = [[BOS] + [10 * (d + 1) + c] * 3 for d, n in enumerate(sizes) for c in range(n)]
    return ids, sizes


def _interleaved_rows(ids, sizes, seed):
    """Rows in which some document's tokens come back after another document's (3 captions per row)."""
    bad = 0
    for x, _, _ in _packed_batches(ids, sizes, 4, 12, BOS, random.Random(seed)):
        for row in x.tolist():
            docs = [t // 10 for t in row if t != BOS]
            runs = [d for k, d in enumerate(docs) if k == 0 or d != docs[k - 1]]
            bad += len(runs) != len(set(runs))
    return bad


def test_packed_rows_keep_each_image_document_together():
    ids, sizes = _docs(copies=4)  # 44 captions, 20 documents
    rows = torch.cat([x for x, _, _ in _packed_batches(ids, sizes, 4, 12, BOS, random.Random(0))])
    assert rows.shape == (sum(len(c) for c in ids) // 12, 12)
    assert sum(_interleaved_rows(ids, sizes, seed) for seed in range(20)) == 0
    # the check can fail: one caption per document shuffles captions of an image apart
    assert sum(_interleaved_rows(ids, [1] * len(ids), seed) for seed in range(20)) > 0


def test_packed_labels_skip_bos_and_keep_everything_else():
    ids, sizes = _docs()
    for x, mask, labels in _packed_batches(ids, sizes, 3, 8, BOS, random.Random(1)):
        assert bool(mask.all())
        assert bool((labels[x == BOS] == -100).all())
        assert bool((labels[x != BOS] == x[x != BOS]).all())


def test_corpus_group_sizes_must_cover_the_captions():
    with pytest.raises(ValueError, match="group_sizes"):
        CaptionCorpus("x", ["a", "b", "c"], ["d"], [2, 2])
    assert CaptionCorpus("x", ["a", "b"], []).group_sizes == [1, 1]


def test_pack_length_longer_than_positions_is_an_error(tmp_path):
    corpus = CaptionCorpus("x", ["a red circle"] * 4, ["a red circle"], [2, 2])
    with pytest.raises(UserError, match="caption_lm.pack_length"):
        build_caption_lm(corpus, CaptionLMConfig(n_positions=16, pack_length=32), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_packed_pretraining_runs_and_caches_by_documents(tmp_path):
    caps = ["a small red circle", "there is a small red circle", "a large blue square", "one large blue square"]
    cfg = CaptionLMConfig(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_positions=32, epochs=1, batch_size=2,
                          pack_length=16)
    a = build_caption_lm(CaptionCorpus("x", caps, caps[:1], [2, 2]), cfg, tmp_path)
    b = build_caption_lm(CaptionCorpus("x", caps, caps[:1], [1, 1, 1, 1]), cfg, tmp_path)
    assert a.info["cache_dir"] != b.info["cache_dir"]  # other documents, other LM
    unpacked = CaptionLMConfig(**{**cfg.__dict__, "pack_length": 0})
    c = build_caption_lm(CaptionCorpus("x", caps, caps[:1], [2, 2]), unpacked, tmp_path)
    d = build_caption_lm(CaptionCorpus("x", caps, caps[:1], [1, 1, 1, 1]), unpacked, tmp_path)
    assert c.info["cache_dir"] == d.info["cache_dir"]  # unpacked: documents do not matter
    assert a.info["dev_perplexity"] > 0


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_word_embeddings_stay_at_init_and_special_tokens_learn(tmp_path, freeze):
    caps = ["a small red circle", "there is a small red circle", "a large blue square", "one large blue square"]
    cfg = CaptionLMConfig(vocab_size=300, n_layer=1, n_embd=32, n_head=2, n_positions=32, epochs=2, batch_size=2,
                          lr=1e-2, pack_length=16, freeze_embeddings=freeze)
    lm = build_caption_lm(CaptionCorpus("x", caps, caps[:1], [2, 2]), cfg, tmp_path)
    trained = lm.model.get_input_embeddings().weight
    initial = initial_model(cfg, lm.tokenizer).get_input_embeddings().weight  # same seed, same config
    special = torch.zeros(trained.shape[0], dtype=torch.bool)
    special[[lm.tokenizer.pad_token_id, lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id]] = True
    words = lm.tokenizer(" red blue circle square", add_special_tokens=False).input_ids
    moved = (trained - initial).abs().amax(dim=1)
    # [bos]/[eos] are in every document, so they always get a gradient; the words do too unless frozen
    assert bool((moved[[lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id]] > 1e-4).all())
    if freeze:
        assert float(moved[~special].max()) == 0.0
    else:
        assert bool((moved[words] > 1e-4).all())


def test_new_settings_enter_the_cache_key_only_when_set():
    corpus = CaptionCorpus("x", ["a small red circle", "a large blue square"], ["a red circle"])
    cfg = CaptionLMConfig()
    # the key as it was computed before pack_length and freeze_embeddings existed
    old_settings = {k: v for k, v in asdict(cfg).items() if k not in ("pack_length", "freeze_embeddings")}
    old_key = hashlib.sha256(json.dumps([corpus.fingerprint(), old_settings]).encode()).hexdigest()[:12]
    assert cache_key(corpus, cfg) == old_key
    assert cache_key(corpus, CaptionLMConfig(freeze_embeddings=True)) != old_key
    assert cache_key(corpus, CaptionLMConfig(pack_length=64)) != old_key
