"""caption-gpt2-tiny: a small GPT-2 that knows caption language and has never seen an image.

CPU stand-in for a pretrained LM: a byte-level BPE tokenizer and a 4x256 GPT-2, both trained on
the *training* captions only (text, no images), cached by a hash of (data set, captions, config).
``load_language_backbone`` is the one place that picks between it and a pretrained LM.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_dir, atomic_write_json, build_lock
from .configs import CAPTION_LM, CaptionLMConfig
from .errors import UserError
from .language import LanguageBackbone, frozen_lm, load_pretrained_lm, pad_batch, start_given_labels
from .settings import without_unset


def is_caption_lm(name: str) -> bool:
    """Whether backbone ``name`` is built from a data set's training captions (and so needs them)."""
    return name == CAPTION_LM


def load_language_backbone(name: str, *, cache_dir: Path, caption_corpus: "CaptionCorpus | None" = None,
                           caption_lm_config: "CaptionLMConfig | None" = None) -> LanguageBackbone:
    """The caption LM built from ``caption_corpus`` (the data set's training captions), or a pretrained LM."""
    if not is_caption_lm(name):
        return load_pretrained_lm(name, Path(cache_dir))
    if caption_corpus is None:
        raise UserError(f"'{CAPTION_LM}' is pretrained on a data set's training captions; none given")
    return build_caption_lm(caption_corpus, caption_lm_config or CaptionLMConfig(), Path(cache_dir))


@dataclass
class CaptionCorpus:
    """Captions the caption LM may learn from (train) and is measured on (dev)."""

    name: str
    train: list[str]
    dev: list[str]
    group_sizes: list[int] = field(default_factory=list)  # captions per training image, in order

    def __post_init__(self):
        if not self.group_sizes:
            self.group_sizes = [1] * len(self.train)
        if sum(self.group_sizes) != len(self.train):
            raise ValueError("CaptionCorpus: group_sizes must add up to the number of training captions")

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for cap in self.train:
            h.update(cap.encode() + b"\n")
        return h.hexdigest()[:16]


SPECIALS = ["<pad>", "<bos>", "<eos>"]


def train_bpe_tokenizer(captions: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def _batches(ids: list[list[int]], batch_size: int, pad: int, shuffle: bool, rng: random.Random):
    order = list(range(len(ids)))
    if shuffle:
        rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        x, mask = pad_batch([ids[j] for j in order[i : i + batch_size]], pad)
        yield x, mask, start_given_labels(x, mask)


def _packed_rows(ids: list[list[int]], length: int) -> int:
    """Full rows of ``length`` tokens in one epoch of packed captions (the tail is dropped)."""
    return sum(len(c) for c in ids) // length


def _packed_batches(ids: list[list[int]], group_sizes: list[int], batch_size: int, length: int, bos: int,
                    rng: random.Random):
    """Rows of ``length`` tokens cut from documents laid end to end (a document = the captions of one
    image; documents in shuffled order); every token is a target except a [bos] (given)."""
    starts = [0, *itertools.accumulate(group_sizes)]
    documents = [range(a, b) for a, b in zip(starts, starts[1:])]
    rng.shuffle(documents)
    stream = torch.tensor([t for doc in documents for j in doc for t in ids[j]], dtype=torch.long)
    n_rows = _packed_rows(ids, length)
    rows = stream[: n_rows * length].view(n_rows, length)
    rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(rng.randrange(2**31)))]
    for i in range(0, len(rows), batch_size):
        x = rows[i : i + batch_size]
        yield x, torch.ones_like(x), x.masked_fill(x == bos, -100)


def _encode(tok, captions: list[str], max_tokens: int) -> list[list[int]]:
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return [[bos] + tok(c, add_special_tokens=False).input_ids[:max_tokens] + [eos] for c in captions]


@torch.no_grad()
def perplexity(model, ids: list[list[int]], pad: int, batch_size: int = 128) -> float:
    model.eval()
    total, count = 0.0, 0
    for x, mask, labels in _batches(ids, batch_size, pad, False, random.Random(0)):
        out = model(input_ids=x, attention_mask=mask, labels=labels)
        n = int((labels[:, 1:] != -100).sum())
        total += float(out.loss) * n
        count += n
    return math.exp(total / max(count, 1))


CAPTION_LM_KEYS_ADDED_LATER = ("pack_length", "freeze_embeddings")


def cache_key(corpus: CaptionCorpus, cfg: CaptionLMConfig) -> str:
    """Hash of (captions, settings); settings added later enter it only when set, so that caches
    made before they existed keep their key."""
    settings = without_unset(asdict(cfg), CaptionLMConfig, CAPTION_LM_KEYS_ADDED_LATER)
    parts = [corpus.fingerprint(), settings]
    if cfg.pack_length:  # documents matter only when packed
        parts.append(hashlib.sha256(json.dumps(corpus.group_sizes).encode()).hexdigest()[:16])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def build_caption_lm(corpus: CaptionCorpus, cfg: CaptionLMConfig, cache_dir: Path):
    """Train (or load from cache) the caption LM; returns a LanguageBackbone."""
    out_dir = cache_dir / f"{CAPTION_LM}-{corpus.name}-{cache_key(corpus, cfg)}"
    if not (out_dir / "info.json").exists():
        with build_lock(out_dir):  # a second process building the same entry waits, then loads the first one's
            if not (out_dir / "info.json").exists():
                _train_caption_lm(corpus, cfg, out_dir)
    return load_caption_lm_dir(out_dir)


def load_caption_lm_dir(out_dir: Path):
    """A trained caption LM from its cache folder (what a saved run points at)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    info = json.loads((Path(out_dir) / "info.json").read_text())
    tok = AutoTokenizer.from_pretrained(out_dir)
    model = GPT2LMHeadModel.from_pretrained(out_dir)
    info["cache_dir"] = str(out_dir)
    return frozen_lm(CAPTION_LM, model, tok, info)


def initial_model(cfg: CaptionLMConfig, tok):
    """The caption LM before pretraining: a fresh GPT-2 seeded with ``cfg.seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tok), n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    ))


def _train_caption_lm(corpus: CaptionCorpus, cfg: CaptionLMConfig, out_dir: Path) -> None:
    from rich.progress import Progress

    start = time.time()
    rng = random.Random(cfg.seed)
    tok = train_bpe_tokenizer(corpus.train, cfg.vocab_size)
    model = initial_model(cfg, tok)
    train_ids = _encode(tok, corpus.train, cfg.max_tokens)
    dev_ids = _encode(tok, corpus.dev, cfg.max_tokens)
    if cfg.pack_length:
        steps = cfg.epochs * math.ceil(_packed_rows(train_ids, cfg.pack_length) / cfg.batch_size)
    else:
        steps = cfg.epochs * math.ceil(len(train_ids) / cfg.batch_size)
    groups = [{"params": list(model.parameters())}]
    if cfg.freeze_embeddings:
        embeddings = model.transformer.wte.weight  # tied with the output head
        learned = torch.zeros(len(tok), 1)
        learned[[tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]] = 1
        embeddings.register_hook(lambda grad: grad * learned)
        # No weight decay there either, so that rows without gradient stay exactly where they are.
        groups = [{"params": [embeddings], "weight_decay": 0.0},
                  {"params": [p for p in model.parameters() if p is not embeddings]}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.05)
    history = []
    with Progress(transient=True) as progress:
        task = progress.add_task(f"pretraining caption-gpt2-tiny on {corpus.name} captions", total=steps)
        for epoch in range(cfg.epochs):
            model.train()
            batches = (_packed_batches(train_ids, corpus.group_sizes, cfg.batch_size, cfg.pack_length,
                                       tok.bos_token_id, rng)
                       if cfg.pack_length else _batches(train_ids, cfg.batch_size, tok.pad_token_id, True, rng))
            for x, mask, labels in batches:
                loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                progress.advance(task)
            history.append({"epoch": epoch + 1, "dev_perplexity": perplexity(model, dev_ids, tok.pad_token_id)})
    info = {
        "corpus": corpus.name, "config": asdict(cfg), "vocab_size": len(tok),
        "train_captions": len(train_ids), "dev_captions": len(dev_ids),
        "dev_perplexity": history[-1]["dev_perplexity"], "history": history,
        "train_seconds": round(time.time() - start, 1),
    }

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "info.json", info)

    atomic_dir(out_dir, save)
