"""Shared fixtures: tiny real-code-path models and small data, built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from vlm_core.caption_lm import CaptionCorpus, CaptionLMConfig  # noqa: E402
from vlm_core.shapes import ShapesConfig, load_shapes  # noqa: E402
from vlm_core.caption_lm import load_language_backbone  # noqa: E402
from vlm_core.language import tiny_random_gpt2  # noqa: E402

TINY_LM = CaptionLMConfig(vocab_size=400, n_layer=2, n_embd=64, n_head=2, epochs=40, batch_size=32, lr=3e-3)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def shapes_small():
    return load_shapes(ShapesConfig(seed=3, train=48, dev=16, test=16))


@pytest.fixture(scope="session")
def caption_lm(shapes_small, cache_dir):
    corpus = CaptionCorpus(shapes_small.name, shapes_small.split_captions("train"), shapes_small.split_captions("dev"))
    return load_language_backbone("caption-gpt2-tiny", cache_dir=cache_dir, caption_corpus=corpus, caption_lm_config=TINY_LM)


@pytest.fixture(scope="session")
def gpt2_tiny():
    return tiny_random_gpt2()


@pytest.fixture(scope="session")
def effnet():
    from vlm_core.vision import load_efficientnet_lite0

    return load_efficientnet_lite0()
