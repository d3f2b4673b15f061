"""How captions are generated: the decoding settings, defined and checked once, and the code that decodes
with them. Every training config carries them (TrainConfig is a DecodingConfig), so a table keeps writing
``train.num_beams`` and a run's config hash is what it was. torch is imported only when decoding runs, so a
table loads without it."""
from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import UserError

RERANKS = ("none", "consensus")


@dataclass
class DecodingConfig:
    max_new_tokens: int = 24
    num_beams: int = 1
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this size (0 = off)
    length_penalty: float = 1.0  # beam search ranks by log-probability / length ** length_penalty (transformers')
    rerank: str = "none"  # "none": the top beam | "consensus": the beam candidate agreeing most with the evidence (rerank.py)
    rerank_samples: int = 0  # consensus evidence: this many sampled captions per image (0: the other beams)
    rerank_temperature: float = 1.0  # sampling temperature of that evidence
    generate_batch_size: int = 100  # images decoded at once

    def __post_init__(self):
        for key in ("max_new_tokens", "num_beams", "generate_batch_size"):
            if getattr(self, key) < 1:
                raise UserError(f"train.{key} must be >= 1, not {getattr(self, key)}")
        if self.rerank not in RERANKS:
            raise UserError(f"train.rerank must be one of {', '.join(RERANKS)}, not {self.rerank!r}")
        if self.rerank != "none" and self.num_beams < 2:
            raise UserError(f"train.rerank = {self.rerank!r} chooses among beam candidates: it needs train.num_beams >= 2")
        if self.rerank_samples < 0 or self.rerank_temperature <= 0:
            raise UserError("train.rerank_samples must be >= 0 and train.rerank_temperature > 0")
        if self.rerank == "none" and (self.rerank_samples or self.rerank_temperature != 1.0):
            raise UserError("train.rerank_samples / rerank_temperature act only with train.rerank = 'consensus'")
        if self.num_beams == 1 and self.length_penalty != 1.0:
            raise UserError("train.length_penalty acts only in beam search: it needs train.num_beams >= 2")

    def decoding(self) -> DecodingConfig:
        """The decoding settings alone (of a TrainConfig: what its run is captioned with)."""
        return DecodingConfig(**{f.name: getattr(self, f.name) for f in fields(DecodingConfig)})


def decode(model, features, decoding: DecodingConfig) -> tuple[list[str], list[int]]:
    """Captions and their first generated ids for a batch of features (a CaptionModel's), as ``decoding`` says."""
    import torch

    from .rerank import consensus_choice

    with torch.no_grad():
        k = decoding.num_beams if decoding.rerank == "consensus" else 1
        texts, firsts = model.generate(features, max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams,
                                       no_repeat_ngram_size=decoding.no_repeat_ngram_size,
                                       length_penalty=decoding.length_penalty, num_return_sequences=k,
                                       first_token_ids=True)
        if k == 1:
            return texts, firsts
        candidates = [texts[i : i + k] for i in range(0, len(texts), k)]
        evidence = None
        if decoding.rerank_samples:
            n = decoding.rerank_samples
            cuda = [model.device] if model.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):  # the same evidence for the same batch, every time, no side effect
                torch.manual_seed(0)
                samples = model.sample(features, max_new_tokens=decoding.max_new_tokens, num_samples=n,
                                       temperature=decoding.rerank_temperature)
            evidence = [samples[i : i + n] for i in range(0, len(samples), n)]
    picks = consensus_choice(candidates, evidence)
    return [texts[j * k + p] for j, p in enumerate(picks)], [firsts[j * k + p] for j, p in enumerate(picks)]


def generate_captions(model, feats, decoding: DecodingConfig, rows: list[int] | None = None,
                      with_first_token: bool = False):
    """Captions for the given rows of a feature set (all rows by default), batched."""
    model.eval()
    rows = list(range(len(feats.ids))) if rows is None else rows
    texts, firsts = [], []
    for i in range(0, len(rows), decoding.generate_batch_size):
        t, f = decode(model, feats.batch(rows[i : i + decoding.generate_batch_size]), decoding)
        texts += t
        firsts += f
    return (texts, firsts) if with_first_token else texts
