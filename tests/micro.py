"""A micro control table (seconds to run) and helpers shared by the end-to-end tests."""
from __future__ import annotations

import hashlib
from pathlib import Path

MICRO = """
[table]
name = "{name}"
description = "micro table for tests"
seeds = {seeds}

[data]
name = "shapes"

[data.shapes]
train = 24
dev = 8
test = 8
seed = 7

[backbones]
vision = "tiny-random-clip"
language = "caption-gpt2-tiny"

[caption_lm]
vocab_size = 300
n_layer = 1
n_embd = 32
n_head = 2
epochs = 2
batch_size = 32
lr = 3e-3

[model]
num_queries = 2
qformer_hidden = 32
qformer_layers = 1
qformer_heads = 2
qformer_intermediate = 64
qformer_dropout = 0.0
lora_rank = 2

[train]
epochs = 2
batch_size = 8
lr = 3e-3
dev_images = 8
max_new_tokens = 8
"""

VARIANTS = {
    "full": '[variants.full]\nexpect = "image_dependent"\n',
    "blind": '[variants.blind]\nmodel = {{ blind = true }}\nexpect = "floor"\n',
    "seed-recipe": '[variants.seed-recipe]\nmodel = {{ recipe = "seed", seed_pad_length = 16 }}\nexpect = "collapsed"\n',
    "meanpool": '[variants.meanpool]\nmodel = {{ connector = "meanpool" }}\nexpect = "worse_than_reference"\n',
    "nan": '[variants.nan]\ntrain = {{ debug_nan_at_step = 2 }}\n',
    "full-checked": '[variants.full]\ntrain = {{ dev_checks = 1 }}\nexpect = "image_dependent"\n',  # dev loss mid-epoch too
}


def write_micro(path: Path, name: str = "micro", seeds=(0, 1), variants=("full", "blind", "seed-recipe"),
                extra: str = "") -> Path:
    text = MICRO.format(name=name, seeds=list(seeds)) + "".join(VARIANTS[v].replace("{{", "{").replace("}}", "}")
                                                               for v in variants) + extra
    path.write_text(text)
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Hash of every file under root: 'byte-identical' checks."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def spy_on(monkeypatch, owner, name: str) -> tuple[list[dict], list]:
    """Record every call of ``owner.name`` (its keyword arguments, and what it returned), still calling through."""
    calls, results = [], []
    real = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(kwargs)
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(owner, name, spy)
    return calls, results
