"""The caption model, top to bottom.

    cached patch tokens [B, N, D] -> connector (Q-Former, mean-pool, ...) -> linear projection
    -> [visual tokens][BOS][caption][EOS] -> frozen causal LM (+ LoRA) -> next-token loss

Label masking follows LAVIS: visual, prompt (BOS) and padding positions are -100, so the loss
sees the caption tokens and exactly one EOS. Generation starts from the same [visual][BOS]
prefix that training used, with an explicit attention mask.

``recipe = "seed"`` swaps the text handling (CaptionText below) for seed_recipe.SeedRecipeText,
which reproduces the original experiment's bugs on purpose; nothing else in this file changes.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_dir, atomic_write, atomic_write_json
from .configs import CaptionModelConfig
from .connector import CONNECTORS, QFormerConnector, eager_attention
from .device import DEFAULT_PRECISION, autocast, full_precision
from .language import LanguageBackbone, caption_token_ids, pad_batch, start_given_labels
from .seed_recipe import SeedRecipeText


class CaptionText:
    """Captions as LM tokens: [BOS] caption [EOS], padding and BOS labelled -100 (LAVIS), and the
    token generation starts from (the same BOS)."""

    def __init__(self, lm: LanguageBackbone, max_tokens: int):
        self.tokenizer = lm.tokenizer
        self.bos_id, self.eos_id, self.pad_id = lm.bos_id, lm.eos_id, lm.pad_id
        self.start_id = lm.bos_id
        self.max_tokens = max_tokens

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, attention mask and labels for the text part of the sequence."""
        seqs = [[self.bos_id] + t + [self.eos_id] for t in caption_token_ids(self.tokenizer, captions, self.max_tokens)]
        ids, mask = pad_batch(seqs, self.pad_id)
        return ids, mask, start_given_labels(ids, mask)


class CaptionModel(nn.Module):
    def __init__(self, cfg: CaptionModelConfig, lm: LanguageBackbone, feature_dim: int, grid: tuple[int, int] | None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = lm.tokenizer
        self.lm_name = lm.name
        self.text = (SeedRecipeText(lm, cfg.max_caption_tokens, cfg.seed_pad_length) if cfg.recipe == "seed"
                     else CaptionText(lm, cfg.max_caption_tokens))
        self.bos_id, self.eos_id, self.pad_id = self.text.bos_id, self.text.eos_id, self.text.pad_id
        self.lm_bos_id = lm.bos_id  # the LM's own start token (what the correct recipe starts from)
        self.precision = DEFAULT_PRECISION  # "bf16" / "fp16": autocast around every forward (see device.py)

        self.connector = CONNECTORS[cfg.connector].from_config(cfg, feature_dim, grid, lm.hidden_size)
        self.projection = nn.Linear(self.connector.out_dim, lm.hidden_size)

        base = copy.deepcopy(lm.model)  # LoRA injects layers in place; the shared backbone stays clean
        for p in base.parameters():
            p.requires_grad_(False)
        if cfg.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            targets = cfg.lora_targets or lm.lora_targets
            with warnings.catch_warnings():
                # With "lm_head" among the targets peft warns that (1) the tied head is adapted
                # without re-tying (intended: the adapter changes the output layer only, the input
                # embedding stays frozen) and (2) fan_in_fan_out is corrected for that nn.Linear
                # (GPT-2's Conv1D layers need it, the head does not; peft handles it per module).
                warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
                warnings.filterwarnings("ignore", message="fan_in_fan_out is set to True.*")
                self.lm = get_peft_model(base, LoraConfig(
                    r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                    target_modules=targets, bias="none", fan_in_fan_out="c_attn" in targets,
                ))
        else:
            self.lm = base
        if not cfg.train_qformer:
            for p in self.connector.parameters():
                p.requires_grad_(False)
        self.lm.eval()

    # ---- modes ---------------------------------------------------------------------------
    def train_trainable_parts(self) -> "CaptionModel":
        """Train mode for the trained parts only; frozen parts stay in eval() (no dropout).

        The LoRA adapters live inside the frozen LM, so their dropout (``lora_dropout``) is switched
        back on by hand: with the whole LM in eval() it would silently never apply."""
        self.train()
        self.lm.eval()
        for name, module in self.lm.named_modules():
            if name.endswith(".lora_dropout"):
                module.train()
        if not self.cfg.train_qformer:
            self.connector.eval()
        return self

    # ---- device ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model's weights are: every tensor the model makes is made there."""
        return self.projection.weight.device

    def _autocast(self):
        return autocast(self.device, self.precision)

    # ---- inputs --------------------------------------------------------------------------
    def visual_tokens(self, features: torch.Tensor) -> torch.Tensor:
        features = features.to(self.device, torch.float32)
        if self.cfg.blind:  # every image gives the same tokens: compute them once, then repeat
            zeros = features.new_zeros(1, *features.shape[1:])
            return self.projection(self.connector(zeros)).expand(features.shape[0], -1, -1)
        return self.projection(self.connector(features))

    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, attention mask and labels for the text part of the sequence."""
        return self.text.encode(captions)

    def _prefix_inputs(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, repeats: int = 1):
        """LM inputs for [visual tokens][text ids]: embeddings, attention mask, number of visual tokens."""
        visual = self.visual_tokens(features)
        if repeats > 1:  # several captions per image: run the connector once per image
            visual = visual.repeat_interleave(repeats, dim=0)
        embeds = torch.cat([visual, self.lm.get_input_embeddings()(ids)], dim=1)
        attn = torch.cat([torch.ones(visual.shape[:2], dtype=mask.dtype, device=self.device), mask], dim=1)
        return embeds, attn, visual.shape[1]

    def _target_logits(self, features, ids, mask, labels, repeats: int = 1):
        """Logits at the positions that predict a target token, flattened: ([n_targets, vocab], [n_targets]).

        The LM head (vocab x width) is the most expensive layer here; running it only on target
        positions, as one matrix product, skips visual, BOS and padding positions."""
        ids, mask, labels = ids.to(self.device), mask.to(self.device), labels.to(self.device)
        embeds, attn, n_visual = self._prefix_inputs(features, ids, mask, repeats)
        out = self.lm(inputs_embeds=embeds, attention_mask=attn, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][:, n_visual - 1 : n_visual - 1 + ids.shape[1]]  # position t predicts token t
        keep = labels != -100
        with full_precision(self.device):  # bf16 logits of 32-128 come in steps of 0.25-0.5: losses and NLL gaps move
            logits = self.lm.get_output_embeddings()(hidden[keep].float())
        return logits, labels[keep], keep

    # ---- loss ----------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, captions: list[str], repeats: int = 1,
                label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean loss per target token; ``captions`` holds ``repeats`` captions per image, in order."""
        ids, mask, labels = self.encode_captions(captions)
        with self._autocast():
            logits, targets, _ = self._target_logits(features, ids, mask, labels, repeats)
            return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)

    def _nll_sums(self, features, ids, mask, labels, repeats: int):
        """Summed NLL (nats, with gradient) and target-token count of each row: ([B], [B]) on the model's device."""
        with self._autocast():
            logits, targets, keep = self._target_logits(features, ids, mask, labels, repeats)
        nll = F.cross_entropy(logits.float(), targets, reduction="none")
        return per_row_sums(nll, keep, fixed_order=fixed_order_sums(nll.device)), keep.sum(1)

    @torch.no_grad()
    def caption_nll(self, features: torch.Tensor, captions: list[str], repeats: int = 1) -> torch.Tensor:
        """Mean NLL per target token of each caption given its image, in nats [len(captions)], on the CPU."""
        total, count = self._nll_sums(features, *self.encode_captions(captions), repeats)
        return (total / count.clamp(min=1)).cpu()

    def generated_nll_sums(self, features: torch.Tensor, generated: list[list[int]], repeats: int = 1) -> torch.Tensor:
        """Summed NLL (with gradient) of token sequences as generate produced them after [visual][start]:
        exactly the sampled ids, their EOS a target only where one was generated. [len(generated)] on the
        model's device; what self-critical training weighs."""
        ids, mask = pad_batch([[self.text.start_id] + row for row in generated], self.pad_id)
        return self._nll_sums(features, ids, mask, start_given_labels(ids, mask), repeats)[0]

    # ---- generation ----------------------------------------------------------------------
    def _generate_ids(self, features: torch.Tensor, **options) -> torch.Tensor:
        """New token ids [B * returned sequences, T] on the CPU from the [visual tokens][start token] prefix
        (with inputs_embeds only new tokens come back); ``options`` go to transformers' generate."""
        with self._autocast():
            visual = self.visual_tokens(features)
            start = torch.full((features.shape[0], 1), self.text.start_id, dtype=torch.long, device=self.device)
            embeds = torch.cat([visual, self.lm.get_input_embeddings()(start)], dim=1)
            return self.lm.generate(
                inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device),
                eos_token_id=self.eos_id, pad_token_id=self.pad_id, **options,
            ).cpu()

    def _texts(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(_cut_at_eos(ids, self.eos_id), skip_special_tokens=True)]

    @torch.no_grad()
    def generate(self, features: torch.Tensor, max_new_tokens: int, num_beams: int = 1,
                 no_repeat_ngram_size: int = 0, first_token_ids: bool = False, length_penalty: float = 1.0,
                 num_return_sequences: int = 1):
        """Captions for cached features. Returns strings (and the first generated id if asked); with
        ``num_return_sequences`` = k, the k best beams of each image in turn (image 0's k, then image 1's)."""
        beam_only = {}  # passed only when set: the default call is the one made before these options existed
        if length_penalty != 1.0:
            beam_only["length_penalty"] = length_penalty
        if num_return_sequences > 1:
            beam_only["num_return_sequences"] = num_return_sequences
        out = self._generate_ids(features, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                 no_repeat_ngram_size=no_repeat_ngram_size, **beam_only)
        texts = self._texts(out)
        if first_token_ids:
            return texts, out[:, 0].tolist()
        return texts

    @torch.no_grad()
    def sample(self, features: torch.Tensor, max_new_tokens: int, num_samples: int, temperature: float = 1.0) -> list[str]:
        """``num_samples`` captions per image drawn from the model (ancestral sampling at ``temperature``),
        image 0's first; what consensus reranking weighs beam candidates against."""
        return self.sample_with_ids(features, max_new_tokens, num_samples, temperature)[0]

    @torch.no_grad()
    def sample_with_ids(self, features: torch.Tensor, max_new_tokens: int, num_samples: int,
                        temperature: float = 1.0) -> tuple[list[str], list[list[int]]]:
        """Sampled captions and their generated ids (up to and including the EOS, where one was generated)."""
        out = self._generate_ids(features, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                 top_k=0, top_p=1.0, num_return_sequences=num_samples)
        return self._texts(out), _cut_at_eos(out, self.eos_id, keep_eos=True)

    @torch.no_grad()
    def beams_with_ids(self, features: torch.Tensor, max_new_tokens: int, num_beams: int,
                       no_repeat_ngram_size: int = 0, length_penalty: float = 1.0) -> tuple[list[str], list[list[int]]]:
        """The ``num_beams`` finished beams of each image (image 0's first) and their generated ids (up to and
        including the EOS, where one was generated): the captions beam-search decoding chooses among."""
        penalty = {"length_penalty": length_penalty} if length_penalty != 1.0 else {}  # as generate passes it
        out = self._generate_ids(features, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                 no_repeat_ngram_size=no_repeat_ngram_size, num_return_sequences=num_beams, **penalty)
        return self._texts(out), _cut_at_eos(out, self.eos_id, keep_eos=True)

    @torch.no_grad()
    def next_token_probs(self, features: torch.Tensor, rows: list[list[int]]) -> torch.Tensor:
        """P(next token) [B, vocab] after [visual tokens][row] for each image and token row: what a
        diagnosis measures (e.g. P(EOS) right after the start token)."""
        ids, mask = (t.to(self.device) for t in pad_batch(rows, self.pad_id))
        with self._autocast():
            embeds, attn, n_visual = self._prefix_inputs(features, ids, mask)
            hidden = self.lm(inputs_embeds=embeds, attention_mask=attn, output_hidden_states=True,
                             logits_to_keep=1).hidden_states[-1]
            last = n_visual + mask.sum(1) - 1  # right padding: the last real position of each row
            with full_precision(self.device):  # P(EOS) is a number the diagnoses quote: no bf16 rounding
                logits = self.lm.get_output_embeddings()(hidden[torch.arange(len(rows), device=self.device), last].float())
        return logits.float().softmax(-1).cpu()

    # ---- looking inside ------------------------------------------------------------------
    @torch.no_grad()
    def query_attention(self, features: torch.Tensor) -> torch.Tensor | None:
        """Where each query looks: [layers, B, Q, N patch tokens] on the CPU; None without a Q-Former."""
        if not isinstance(self.connector, QFormerConnector):
            return None
        x = features.to(self.device, torch.float32)
        if self.cfg.blind:
            x = torch.zeros_like(x)
        return self.connector.cross_attention_maps(x).cpu()

    @torch.no_grad()
    def visual_attention_share(self, features: torch.Tensor, rows: list[list[int]]) -> torch.Tensor:
        """How much the LM reads the visual prefix while it writes: per layer, the share of attention mass on
        the visual tokens, averaged over heads and over the text positions that produced a token. ``rows`` are
        [start] + the generated ids, run teacher-forced (the same attention as during greedy generation).
        Returns [layers, B] on the CPU."""
        ids, mask = (t.to(self.device) for t in pad_batch(rows, self.pad_id))
        with eager_attention(self.lm), self._autocast():
            embeds, attn, n = self._prefix_inputs(features, ids, mask)
            layers = self.lm(inputs_embeds=embeds, attention_mask=attn, output_attentions=True, logits_to_keep=1).attentions
        weights = mask.float()
        shares = [(a.float().mean(1)[:, n:, :n].sum(-1) * weights).sum(1) / weights.sum(1) for a in layers]
        return torch.stack(shares).cpu()

    # ---- bookkeeping ---------------------------------------------------------------------
    def parameter_report(self) -> dict[str, dict[str, int]]:
        """Trainable / frozen parameter counts per module: the 'few trainable parameters' check."""
        groups: dict[str, dict[str, int]] = {}

        def add(group: str, p: nn.Parameter):
            g = groups.setdefault(group, {"trainable": 0, "frozen": 0})
            g["trainable" if p.requires_grad else "frozen"] += p.numel()

        for name, p in self.connector.named_parameters():
            add("query_tokens" if name == "query_tokens" else f"connector.{self.cfg.connector}", p)
        for p in self.projection.parameters():
            add("projection", p)
        for name, p in self.lm.named_parameters():
            add("lm.lora" if "lora_" in name else "lm.base", p)
        return groups

    def save_trainable(self, out_dir: Path) -> None:
        """Only what was trained: connector/projection as safetensors, LoRA via peft, plus the config."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        head = {f"connector.{k}": v for k, v in self.connector.state_dict().items()}
        head.update({f"projection.{k}": v for k, v in self.projection.state_dict().items()})
        atomic_write(out_dir / "connector_projection.safetensors",
                     lambda p: save_file({k: v.contiguous().cpu() for k, v in head.items()}, str(p)))
        if self.cfg.lora_rank > 0:
            # The (tied, frozen) embedding is part of the base LM: an adapter on lm_head must not make
            # peft save the whole embedding matrix as if it had been trained.
            atomic_dir(out_dir / "lora", lambda tmp: self.lm.save_pretrained(tmp, save_embedding_layers=False))
        atomic_write_json(out_dir / "model_config.json", {"model": asdict(self.cfg), "lm": self.lm_name})

    def load_trainable(self, out_dir: Path) -> None:
        from safetensors.torch import load_file

        out_dir = Path(out_dir)
        head = load_file(str(out_dir / "connector_projection.safetensors"), device=str(self.device))
        self.connector.load_state_dict({k[len("connector."):]: v for k, v in head.items() if k.startswith("connector.")})
        self.projection.load_state_dict({k[len("projection."):]: v for k, v in head.items() if k.startswith("projection.")})
        if self.cfg.lora_rank > 0:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.lm, load_file(str(out_dir / "lora" / "adapter_model.safetensors"),
                                                         device=str(self.device)))


def fixed_order_sums(device: torch.device) -> bool:
    """Where index_add is not repeatable (CUDA accumulates it with atomics)."""
    return device.type == "cuda"


def per_row_sums(values: torch.Tensor, keep: torch.Tensor, fixed_order: bool) -> torch.Tensor:
    """Sum per row of ``values`` (one per True of ``keep`` [B, T], row-major). ``fixed_order`` (CUDA, where
    index_add accumulates with atomics: a different float sum each run) sums a zero-padded [B, T] instead."""
    if fixed_order:
        return torch.zeros(keep.shape, device=values.device, dtype=values.dtype).masked_scatter(keep, values).sum(1)
    return torch.zeros(keep.shape[0], device=values.device, dtype=values.dtype).index_add(0, keep.nonzero()[:, 0], values)


def _cut_at_eos(ids: torch.Tensor, eos: int, keep_eos: bool = False) -> list[list[int]]:
    """Each row up to its first EOS (included with ``keep_eos``); rows without one whole."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos) + keep_eos] if eos in row else row)
    return rows
