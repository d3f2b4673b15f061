"""A finished run's trained model, rebuilt from its weights (for `ablate caption`, `ablate attention`
and the decoding screens); evidence records keep no weights, so this needs the local run folder."""
from __future__ import annotations

from pathlib import Path

from vlm_core.caption_lm import CaptionLMConfig, is_caption_lm, load_caption_lm_dir, load_language_backbone
from vlm_core.device import AUTO_DEVICE, DEFAULT_PRECISION, resolve_device
from vlm_core.errors import UserError
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.train import Decoding, TrainConfig
from vlm_core.vision import VisionBackbone, load_vision_backbone

from .record import RunRecord
from .table_data import caption_corpus, run_data


def load_run_model(run: Path, cache_dir: Path, device: str = AUTO_DEVICE, data_dir: str | None = None,
                   weights: str = "final") -> tuple[CaptionModel, VisionBackbone]:
    """Rebuild a finished run's trained model (for `ablate caption`, `ablate attention`), on ``device``;
    ``weights = "xe"``: its cross-entropy model from before the self-critical epochs."""
    record = RunRecord(run)
    config = record.config()
    if record.state() != "done":
        raise UserError(f"{run}: not a finished run folder (no DONE marker)")
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
    target = resolve_device(device)
    vision = load_vision_backbone(config["backbones"]["vision"]).to(target)
    language, lm_dir = config["backbones"]["language"], config.get("lm_info", {}).get("cache_dir")
    inside_cache = lm_dir and Path(lm_dir).resolve().is_relative_to(Path(cache_dir).resolve())
    if is_caption_lm(language) and inside_cache and Path(lm_dir).exists():  # a record never picks a path
        lm = load_caption_lm_dir(Path(lm_dir))
    elif is_caption_lm(language):  # rebuilt (or found in cache_dir) from the run's training captions
        data = run_data(config, data_dir)
        lm = load_language_backbone(language, cache_dir=cache_dir, caption_corpus=caption_corpus(data),
                                    caption_lm_config=CaptionLMConfig(**config["caption_lm"]))
    else:
        lm = load_language_backbone(language, cache_dir=cache_dir)
    model = CaptionModel(CaptionModelConfig(**config["model"]), lm, vision.feature_dim, vision.grid).to(target)
    model.precision = config.get("precision", DEFAULT_PRECISION)
    model.load_trainable(weights_dir)
    model.eval()
    return model, vision


def run_decoding(run: Path) -> Decoding:
    """The decoding settings a run was scored with (what `ablate caption` uses by default)."""
    return TrainConfig(**RunRecord(run).config()["train"]).decoding()
