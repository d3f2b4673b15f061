"""A run's identity: the settings that determine its result and their hash (stored in config.json;
a finished run whose hash differs from the table's now is stale and redone).

One rule for keys added after runs existed, in every section: a key not among HASHED_KEYS (the keys
each section had when it was frozen) enters the hash only when it differs from its default, so adding
a field anywhere (model.*, train.*, probes.*, data.*, ...) at its default keeps every committed run
current. HASHED_KEYS is never extended: a new key is "added later" by not being listed.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict

from vlm_core.configs import SCST_SETTINGS, CaptionLMConfig, CaptionModelConfig, TrainConfig
from vlm_core.shapes import ShapesConfig

from ablations.tables import BackboneSpec, DataSpec, ProbeSpec

# Each hashed section (a dotted path into the settings) and the dataclass that gives its defaults.
SECTIONS = {"data": DataSpec, "data.shapes": ShapesConfig, "backbones": BackboneSpec, "caption_lm": CaptionLMConfig,
            "model": CaptionModelConfig, "train": TrainConfig, "probes": ProbeSpec}

# The keys always hashed (frozen: the sections' keys before the first key was added later). Do not add to it.
HASHED_KEYS = {
    "data": ("name", "path", "eval_split", "eval_images", "train_images", "shapes"),
    "data.shapes": ("seed", "train", "dev", "test", "two_object_share", "image_size"),
    "backbones": ("vision", "language"),
    "caption_lm": ("vocab_size", "n_layer", "n_embd", "n_head", "n_positions", "epochs", "batch_size", "lr",
                   "max_tokens", "pack_length", "freeze_embeddings", "seed"),
    "model": ("connector", "num_queries", "qformer_hidden", "qformer_layers", "qformer_heads", "qformer_intermediate",
              "qformer_cross_attention_frequency", "qformer_dropout", "qformer_init_std", "train_qformer", "lora_rank",
              "lora_alpha", "lora_dropout", "lora_targets", "blind", "recipe", "max_caption_tokens", "seed_pad_length"),
    "train": ("epochs", "batch_size", "lr", "connector_lr", "weight_decay", "warmup_share", "captions_per_image",
              "grad_clip", "dev_images", "explode_factor", "max_new_tokens", "num_beams", "no_repeat_ngram_size",
              "generate_batch_size", "debug_nan_at_step"),
    "probes": ("swap_seed", "spice", "nll_refs"),
}

# The one exception: with self-critical epochs on, their samples / rate / baseline count even at their defaults
# (the self-critical runs were made, and hashed, with them).
KEPT_WHEN = {"train": (lambda section: section.get("scst_epochs", 0) > 0, SCST_SETTINGS)}

# What execute_run stores in config.json beside the settings (RunRecord.begin's ``extra`` and the hash).
RECORD_EXTRAS = ("config_hash", "provenance", "machine", "lm_info", "vision_tokens", "vision_dim")


def settings_of(config: dict) -> dict:
    """The settings part of a stored config.json (what config_hash hashes)."""
    return {k: v for k, v in config.items() if k not in RECORD_EXTRAS}


@functools.cache
def _defaults(cls) -> dict:
    """A section's defaults as stored data (computed once per class: `ablate list` hashes every cell)."""
    return asdict(cls())


def hashed_section(values: dict, path: str) -> dict:
    """One section as it enters the hash: a key added later only when it differs from its default (a key
    the dataclass no longer has is kept: its default is unknown); sub-sections likewise."""
    base, always = _defaults(SECTIONS[path]), HASHED_KEYS[path]
    when, kept = KEPT_WHEN.get(path, (lambda _: False, ()))
    keep = kept if when(values) else ()
    out = {}
    for key, value in values.items():
        if key not in always and key not in keep and key in base and value == base[key]:
            continue
        out[key] = hashed_section(value, f"{path}.{key}") if isinstance(value, dict) and f"{path}.{key}" in SECTIONS \
            else value
    return out


def config_hash(config: dict) -> str:
    """Hash of the settings that determine a run's result (see tables.variant_config); the table's and
    the variant's names are left out, so renaming either keeps its runs current."""
    settings = {k: v for k, v in config.items() if k not in ("table", "variant")}
    for section in SECTIONS:
        if "." not in section and isinstance(settings.get(section), dict):
            settings[section] = hashed_section(settings[section], section)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
