"""Connectors from frozen patch tokens [B, N, D] to visual tokens [B, Q, H]; CONNECTORS (at the end) names each.

``qformer``: learned queries cross-attend to the patch tokens (transformers' Blip2QFormerModel).
``meanpool``: the patch tokens averaged into one token (the "no Q-Former" ablation).
``mlp``: each patch token through a GELU MLP (LLaVA-1.5): as many visual tokens as patches.

Each is built by ``from_config(cfg, feature_dim, grid, lm_hidden)`` from the model's config, and has
``fit_feature_stats`` (called once on training features) and ``out_dim``; the model's projection follows it.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .configs import CONNECTOR_NAMES
from .device import full_precision

if TYPE_CHECKING:
    from .configs import CaptionModelConfig


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Attention weights are only returned by the eager implementation: switch to it for a measurement,
    then back (the numbers of the main path stay those of the fast implementation)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper
    before = base.config._attn_implementation
    base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(before)


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sine/cosine positions [h*w, dim]: CNN patch tokens carry no position of their own,
    and without one no connector could tell 'left of' from 'right of'."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * freqs[None, :]
        parts += [angles.sin(), angles.cos()]
    pos = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(pos, (0, dim - pos.shape[1]))


class FeatureStandardizer(nn.Module):
    """Per-channel standardisation with statistics of the training features (fitted once, saved).

    Not a per-token LayerNorm: on CNN features most tokens are background, and normalising each
    token to unit variance amplifies their noise until colour and size stop training."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    @torch.no_grad()
    def fit(self, rows: torch.Tensor) -> None:
        x = rows.float().reshape(-1, rows.shape[-1])
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


class QFormerConnector(nn.Module):
    @classmethod
    def from_config(cls, cfg: CaptionModelConfig, feature_dim: int, grid: tuple[int, int] | None,
                    lm_hidden: int) -> QFormerConnector:
        return cls(feature_dim, grid, cfg.num_queries, cfg.qformer_hidden, cfg.qformer_layers, cfg.qformer_heads,
                   cfg.qformer_intermediate, cfg.qformer_cross_attention_frequency, cfg.qformer_dropout,
                   cfg.qformer_init_std)

    def __init__(self, feature_dim: int, grid: tuple[int, int] | None, num_queries: int, hidden: int,
                 layers: int, heads: int, intermediate: int, cross_attention_frequency: int, dropout: float,
                 init_std: float = 0.0):
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        self.vision_norm = FeatureStandardizer(feature_dim)
        # One down-projection of the patch tokens instead of wide K/V projections in every
        # cross-attention layer: 4x fewer FLOPs on CPU for the same expressiveness in practice.
        self.vision_proj = nn.Linear(feature_dim, hidden)
        if grid is not None:
            self.register_buffer("vision_pos", sincos_2d(grid, hidden), persistent=False)
        else:
            self.vision_pos = None
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, hidden) * 0.02)
        self.qformer = Blip2QFormerModel(Blip2QFormerConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=intermediate, encoder_hidden_size=hidden,
            cross_attention_frequency=cross_attention_frequency,
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
            # BERT's 0.02 assumes pretrained weights; trained from scratch, 0.02 leaves the image
            # ~1% of the query output at init (and a frozen Q-Former nearly blind). 1/sqrt(width)
            # keeps ~30% and lets the image signal train.
            initializer_range=init_std if init_std > 0 else hidden ** -0.5,
        ))
        self.out_dim = hidden

    def fit_feature_stats(self, train_features: torch.Tensor) -> None:
        self.vision_norm.fit(train_features[:512])

    def _patch_tokens(self, features: torch.Tensor) -> torch.Tensor:
        # vision_proj(vision_norm(x)) with the standardisation folded into the weights: the same
        # function without two passes over the [B, N, 1280] patch tokens (7 % of a CPU training step).
        if torch.is_autocast_enabled(features.device.type):
            # In low precision (W/σ)x + b − (W/σ)μ cancels: standardise in fp32 first, then project.
            with full_precision(features.device):
                standardised = self.vision_norm(features.float())
            vision = self.vision_proj(standardised)
        else:
            weight = self.vision_proj.weight / self.vision_norm.std
            bias = self.vision_proj.bias - weight @ self.vision_norm.mean
            vision = nn.functional.linear(features, weight, bias)
        if self.vision_pos is not None:
            vision = vision + self.vision_pos.to(vision.dtype)
        return vision

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=self._patch_tokens(features)).last_hidden_state

    @torch.no_grad()
    def cross_attention_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Each query's attention over the patch tokens, averaged over heads: [cross-attention layers, B, Q, N]."""
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        with eager_attention(self.qformer):
            out = self.qformer(query_embeds=queries, encoder_hidden_states=self._patch_tokens(features),
                               output_attentions=True)
        return torch.stack([a.float().mean(1) for a in out.cross_attentions])


class MeanPoolConnector(nn.Module):
    @classmethod
    def from_config(cls, cfg: CaptionModelConfig, feature_dim: int, grid: tuple[int, int] | None,
                    lm_hidden: int) -> MeanPoolConnector:
        return cls(feature_dim)

    def __init__(self, feature_dim: int):
        super().__init__()
        self.vision_norm = FeatureStandardizer(feature_dim)
        self.out_dim = feature_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.vision_norm(features.mean(dim=1, keepdim=True))

    def fit_feature_stats(self, train_features: torch.Tensor) -> None:
        # Statistics of the pooled vector: per-token ones would shrink the object's signal 49-fold.
        self.vision_norm.fit(train_features[:512].float().mean(dim=1))


class MLPConnector(nn.Module):
    """Each patch token through Linear(D, H) and GELU, H the LM's width: with the model's projection after it, the
    two-layer GELU MLP of LLaVA-1.5 (mlp2x_gelu). No queries and no pooling: the LM reads every patch."""

    @classmethod
    def from_config(cls, cfg: CaptionModelConfig, feature_dim: int, grid: tuple[int, int] | None,
                    lm_hidden: int) -> MLPConnector:
        return cls(feature_dim, lm_hidden)

    def __init__(self, feature_dim: int, hidden: int):
        super().__init__()
        self.vision_norm = FeatureStandardizer(feature_dim)  # CNN channels differ in scale by orders of magnitude
        self.fc = nn.Linear(feature_dim, hidden)
        self.act = nn.GELU()
        self.out_dim = hidden

    def fit_feature_stats(self, train_features: torch.Tensor) -> None:
        self.vision_norm.fit(train_features[:512])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(self.vision_norm(features)))


# Every connector by the name model.connector gives. Its name is also in configs.CONNECTOR_NAMES, where a table
# is checked without torch; a connector missing from either is refused here, when the models are loaded.
CONNECTORS: dict[str, type[nn.Module]] = {"qformer": QFormerConnector, "meanpool": MeanPoolConnector,
                                          "mlp": MLPConnector}
if tuple(CONNECTORS) != CONNECTOR_NAMES:
    raise ImportError(f"connector.CONNECTORS {tuple(CONNECTORS)} and configs.CONNECTOR_NAMES {CONNECTOR_NAMES} differ")
