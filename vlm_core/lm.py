"""A frozen causal LM as the caption model sees it: model, tokenizer, special ids, LoRA targets.

Also the one place that pads token rows and masks labels (LAVIS style: padding and the given
start token are -100), shared by the caption model and the caption LM's pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UserError


@dataclass
class LanguageBackbone:
    name: str
    model: nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerFast
    lora_targets: list[str]
    bos_id: int  # the start token used both in training and in generation
    eos_id: int
    pad_id: int
    info: dict  # e.g. the caption LM's dev perplexity

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]


def default_lora_targets(model: nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if "c_attn" in names:  # GPT-2 family (Conv1D layers)
        return ["c_attn", "c_proj"]
    if "q_proj" in names:  # Llama family (SmolLM2)
        return ["q_proj", "k_proj", "v_proj", "o_proj"]
    raise UserError(f"cannot guess LoRA targets for {type(model).__name__}; set 'lora_targets' in the table")


def _special_ids(tokenizer) -> tuple[int, int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the language model's tokenizer has no EOS token")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad


def _fuse_gelu(model: nn.Module) -> None:
    """GPT-2's ``gelu_new`` is the tanh GELU written as five Python-level ops (a fifth of a CPU step);
    torch's fused ``gelu(approximate='tanh')`` is the same function in one kernel."""
    if getattr(model.config, "activation_function", None) != "gelu_new":
        return
    from transformers.activations import ACT2FN

    for module in model.modules():
        if hasattr(module, "act") and hasattr(module, "c_fc"):  # GPT2MLP
            module.act = ACT2FN["gelu_pytorch_tanh"]
    model.config.activation_function = "gelu_pytorch_tanh"


def frozen_lm(name: str, model: nn.Module, tokenizer, info: dict | None = None) -> LanguageBackbone:
    """Wrap a loaded causal LM: eval mode, no gradients, fused GELU, its special ids and LoRA targets."""
    model.eval()
    _fuse_gelu(model)
    for p in model.parameters():
        p.requires_grad_(False)
    bos, eos, pad = _special_ids(tokenizer)
    return LanguageBackbone(name, model, tokenizer, default_lora_targets(model), bos, eos, pad, info or {})


def caption_token_ids(tokenizer, captions: list[str], max_tokens: int) -> list[list[int]]:
    """The captions' own tokens, no special tokens, at most ``max_tokens`` each."""
    return [tokenizer(c, add_special_tokens=False).input_ids[:max_tokens] for c in captions]


def pad_batch(rows: list[list[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, width] and attention mask (1 = real token), built on the CPU (the model moves
    them to its device); rows longer than width are cut."""
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        row = row[:width]
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long, device="cpu")
        mask[r, : len(row)] = 1
    return ids, mask


def start_given_labels(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Targets for rows that begin with a start token: padding and the start token are -100."""
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 0] = -100  # the start token is the prompt: given, never predicted
    return labels
