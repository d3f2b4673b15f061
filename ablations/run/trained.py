"""A finished run's trained model, rebuilt from its weights (for `ablate caption`, `ablate attention`
and the decoding screens); evidence records keep no weights, so this needs the local run folder."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from vlm_core.caption_lm import CaptionLMConfig, is_caption_lm, load_caption_lm_dir, load_language_backbone
from vlm_core.device import AUTO_DEVICE, DEFAULT_PRECISION, resolve_device
from vlm_core.errors import UserError
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.decoding import DecodingConfig
from vlm_core.train import TrainConfig
from vlm_core.vision import VisionBackbone, load_vision_backbone

from ablations.run.record import RunRecord
from ablations.table_data import caption_corpus, run_data
from ablations.tables import BackboneSpec, DataSpec, checked_section

# The sections of a run's config.json that rebuild its model, each checked as the table's section was.
RUN_SECTIONS = {"data": DataSpec, "backbones": BackboneSpec, "caption_lm": CaptionLMConfig, "model": CaptionModelConfig,
                "train": TrainConfig}
MAX_MODEL_CONFIG_BYTES = 1 << 20  # weights/model_config.json: a few hundred bytes


def run_settings(record: RunRecord) -> dict:
    """The run's config.json, its sections as checked dataclasses: a damaged or hand-edited file is one line
    naming it, not a traceback (or, with model.num_queries = 9999999999, a 1.28 TB tensor)."""
    where = record.path / "config.json"
    config = record.config()
    if not isinstance(config, dict) or not all(isinstance(config.get(k), dict) for k in RUN_SECTIONS):
        raise UserError(f"{where}: not a run's settings (expected an object with {', '.join(RUN_SECTIONS)})")
    lm_info = config.get("lm_info", {})
    if not isinstance(lm_info, dict) or not isinstance(lm_info.get("cache_dir", ""), (str, type(None))):
        raise UserError(f"{where}: lm_info: expected an object whose cache_dir is a path")
    return {**config, **{k: checked_section(cls, config[k], f"{where}: {k}") for k, cls in RUN_SECTIONS.items()}}


def _check_weights(weights_dir: Path, model: CaptionModelConfig) -> None:
    """Each weight file parses (safetensors: a bounded header whose offsets lie inside the file) before a
    backbone is loaded: a truncated, oversized or random file is one line naming it."""
    from safetensors import SafetensorError, safe_open

    path = weights_dir / "model_config.json"
    try:
        if not path.is_file() or path.stat().st_size > MAX_MODEL_CONFIG_BYTES:
            raise UserError(f"{path}: not a regular file of at most {MAX_MODEL_CONFIG_BYTES:_} bytes")
        saved = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise UserError(f"{path}: expected an object with the model's settings under 'model', got "
                        f"{json.dumps(saved)[:80]}")
    files = [weights_dir / "connector_projection.safetensors"]
    if model.lora_rank > 0:
        files.append(weights_dir / "lora" / "adapter_model.safetensors")
    for file in files:
        if not file.is_file():
            raise UserError(f"{file}: missing (or not a regular file)")
        try:
            with safe_open(str(file), "pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as err:
            raise UserError(f"{file}: not a readable safetensors file ({err})") from err


def load_run_model(run: Path, cache_dir: Path, device: str = AUTO_DEVICE, data_dir: str | None = None,
                   weights: str = "final") -> tuple[CaptionModel, VisionBackbone]:
    """Rebuild a finished run's trained model (for `ablate caption`, `ablate attention`), on ``device``;
    ``weights = "xe"``: its cross-entropy model from before the self-critical epochs."""
    from safetensors import SafetensorError

    record = RunRecord(run)
    if record.state() != "done":
        raise UserError(f"{run}: not a finished run folder (no DONE marker)")
    config = run_settings(record)
    if not record.has_weights():
        raise UserError(f"{run}: no weights/ here (run records committed as evidence keep none). Retrain this one "
                        f"cell with: ablate train --table {config.get('table')} --variant {config.get('variant')} "
                        f"--seed {config.get('seed')} --dev-images 1   (then use --run with the folder it prints)")
    if weights not in ("final", "xe"):
        raise UserError(f"weights must be 'final' or 'xe', not {weights!r}")
    weights_dir = record.weights_dir if weights == "final" else record.xe_weights_dir
    if not (weights_dir / "model_config.json").exists():
        raise UserError(f"{run}: no {weights_dir.name}/ (only runs with self-critical epochs, made after "
                        "they were kept, have the cross-entropy model)")
    _check_weights(weights_dir, config["model"])
    target = resolve_device(device)
    vision = load_vision_backbone(config["backbones"].vision).to(target)
    language, lm_dir = config["backbones"].language, config.get("lm_info", {}).get("cache_dir")
    inside_cache = lm_dir and Path(lm_dir).resolve().is_relative_to(Path(cache_dir).resolve())
    if is_caption_lm(language) and inside_cache and Path(lm_dir).exists():  # a record never picks a path
        lm = load_caption_lm_dir(Path(lm_dir))
    elif is_caption_lm(language):  # rebuilt (or found in cache_dir) from the run's training captions
        data = run_data({**config, "data": asdict(config["data"])}, data_dir)
        lm = load_language_backbone(language, cache_dir=cache_dir, caption_corpus=caption_corpus(data),
                                    caption_lm_config=config["caption_lm"])
    else:
        lm = load_language_backbone(language, cache_dir=cache_dir)
    model = CaptionModel(config["model"], lm, vision.feature_dim, vision.grid).to(target)
    model.precision = config.get("precision", DEFAULT_PRECISION)
    try:
        model.load_trainable(weights_dir)
    except (SafetensorError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "state_dict" not in str(err):
            raise  # not about the weights (e.g. out of memory)
        raise UserError(f"{weights_dir}: the weights do not fit the model of {record.path / 'config.json'} "
                        f"({' '.join(str(err).split())[:300]})") from err
    model.eval()
    return model, vision


def run_decoding(run: Path) -> DecodingConfig:
    """The decoding settings a run was scored with (what `ablate caption` uses by default)."""
    return run_settings(RunRecord(run))["train"].decoding()
