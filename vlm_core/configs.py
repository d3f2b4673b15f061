"""The settings a control table gives the captioner: the model, its training (with decoding) and the caption
LM. Plain dataclasses that import no torch, so that a table loads, and `ablate list` answers, without it;
model.py, train.py and caption_lm.py build from them."""
from __future__ import annotations

from dataclasses import dataclass, field

from .decoding import DecodingConfig
from .errors import UserError
from .settings import defaults

# The connectors by name; connector.CONNECTORS builds each (and refuses to load if the two differ).
CONNECTOR_NAMES = ("qformer", "meanpool", "mlp")
CAPTION_LM = "caption-gpt2-tiny"  # the caption-pretrained tiny GPT-2's name as backbones.language


@dataclass
class CaptionModelConfig:
    connector: str = "qformer"  # one of CONNECTOR_NAMES ("meanpool": the no-Q-Former ablation)
    num_queries: int = 16
    qformer_hidden: int = 256
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_intermediate: int = 512
    qformer_cross_attention_frequency: int = 1
    qformer_dropout: float = 0.1
    qformer_init_std: float = 0.0  # 0: 1/sqrt(qformer_hidden); BERT's 0.02 suits pretrained weights only
    train_qformer: bool = True  # False: Q-Former and queries stay at their random init
    lora_rank: int = 8  # 0: no adapters, the LM is fully frozen
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)  # empty: the LM family's default
    blind: bool = False  # visual tokens computed from zeros: no image information at all
    recipe: str = "fixed"  # "fixed" | "seed"
    max_caption_tokens: int = 32
    seed_pad_length: int = 40  # the seed recipe pads every caption to this many tokens

    def __post_init__(self):
        if self.connector not in CONNECTOR_NAMES:
            raise UserError(f"model.connector: unknown connector {self.connector!r}; known: {', '.join(CONNECTOR_NAMES)}")
        if self.recipe not in ("fixed", "seed"):
            raise UserError(f"model.recipe must be 'fixed' or 'seed', not {self.recipe!r}")
        if self.lora_rank < 0 or self.num_queries < 1:
            raise UserError("model.lora_rank must be >= 0 and model.num_queries >= 1")


@dataclass
class TrainConfig(DecodingConfig):
    """[train]: how a variant is trained, and (its DecodingConfig part, keys such as train.num_beams) how its
    captions are then generated: one flat section, so the table's keys and the config hash stay as they were."""

    epochs: int = 4
    batch_size: int = 32  # images per step; each brings captions_per_image captions
    lr: float = 1e-3
    # Learning rate of the connector, its queries and the projection (0 = lr). The image path trained
    # from scratch wants a lower rate than the LoRA adapters: on shapes dev 0.3 x lr beat 1 x and 3 x.
    connector_lr: float = 0.0
    weight_decay: float = 0.01
    warmup_share: float = 0.05
    captions_per_image: int = 1
    # Cross-entropy batches of similar caption length (less padding, faster steps): the epoch's shuffled images are
    # cut into groups of LENGTH_GROUP_BATCHES batches, each group sorted by caption length in tokens, and the
    # batch order shuffled (transformers' LengthGroupedSampler also sorts groups of 50 batches, but keeps
    # their order). Off by default: it changes which captions share a step.
    length_grouped: bool = False
    grad_clip: float = 1.0
    dev_images: int = 500  # dev-loss images (all references of each)
    # Dev-loss checks inside each cross-entropy epoch (0: at the epoch's end only): check k is made after the step
    # nearest k / (dev_checks + 1) of the epoch and labelled with that fraction (exact when the steps divide evenly,
    # as on flickr8k-smollm2: 375 steps, checks after 75, 150, 225, 300); checks that fall on one step are made
    # once. With a one-epoch budget they show whether the dev loss was still falling.
    dev_checks: int = 0
    explode_factor: float = 5.0  # loss above this x the first logged loss = divergence
    label_smoothing: float = 0.0  # training loss only; dev loss and the probes use the plain NLL
    # Self-critical sequence training after the cross-entropy epochs (0 = none): CIDEr-D of sampled captions
    # against the image's training references is the reward (Rennie et al. 2017; see self_critical).
    scst_epochs: int = 0
    scst_samples: int = 5  # sampled captions per image
    # what a sample's reward is measured against: "others", the mean reward of the image's other samples
    # (Luo 2020), or "greedy", the reward of the image's greedy caption (Rennie et al. 2017)
    scst_baseline: str = "others"
    scst_lr: float = 1e-4  # constant; the image path gets scst_lr x connector_lr / lr, as in the cross-entropy epochs
    # which captions are rewarded: "sample", scst_samples captions sampled at temperature 1, or "beam", the
    # scst_samples beams of a beam search of that width (the table's no_repeat_ngram_size, length_penalty), so that the
    # captions trained on are the kind that beam decoding outputs (Cornia et al. 2020, M2 Transformer)
    scst_candidates: str = "sample"
    # images per self-critical epoch (0: every training image): a fresh seeded draw each epoch, so that a screen
    # can afford the self-critical step with a large LM, whose beam search costs more than its training step
    scst_images: int = 0
    debug_nan_at_step: int = 0  # fault injection for tests: force a NaN loss from this step (0 = never)

    def __post_init__(self):
        for key in ("epochs", "batch_size", "captions_per_image"):
            if getattr(self, key) < 1:
                raise UserError(f"train.{key} must be >= 1, not {getattr(self, key)}")
        super().__post_init__()
        if self.dev_checks < 0:
            raise UserError(f"train.dev_checks must be >= 0, not {self.dev_checks}")
        if self.lr <= 0 or self.connector_lr < 0:
            raise UserError("train.lr must be > 0 and train.connector_lr >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"train.label_smoothing must be in [0, 1), not {self.label_smoothing}")
        if self.scst_baseline not in SCST_BASELINES:
            raise UserError(f"train.scst_baseline must be one of {', '.join(SCST_BASELINES)}, not {self.scst_baseline!r}")
        least = 2 if self.scst_baseline == "others" else 1  # "others" needs another sample to compare with
        if self.scst_epochs < 0 or self.scst_samples < least or self.scst_lr <= 0:
            raise UserError(f"train.scst_epochs must be >= 0, train.scst_samples >= {least} (with scst_baseline = "
                            f"{self.scst_baseline!r}) and train.scst_lr > 0")
        if self.scst_candidates not in SCST_CANDIDATES:
            raise UserError(f"train.scst_candidates must be one of {', '.join(SCST_CANDIDATES)}, not {self.scst_candidates!r}")
        if self.scst_images < 0:
            raise UserError(f"train.scst_images must be >= 0 (0: every training image), not {self.scst_images}")
        if self.scst_candidates == "beam" and self.scst_samples < 2:
            raise UserError("train.scst_candidates = 'beam' needs train.scst_samples >= 2 (the beam width)")
        unset = defaults(TrainConfig)
        if not self.scst_epochs and any(getattr(self, k) != unset[k] for k in SCST_SETTINGS + ("scst_candidates", "scst_images")):
            raise UserError("train.scst_samples / scst_lr / scst_baseline / scst_images / scst_candidates act only with "
                            "train.scst_epochs >= 1")


SCST_BASELINES = ("others", "greedy")
SCST_CANDIDATES = ("sample", "beam")
SCST_SETTINGS = ("scst_samples", "scst_lr", "scst_baseline")  # what acts only with scst_epochs >= 1


@dataclass
class CaptionLMConfig:
    vocab_size: int = 8000
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 128
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    max_tokens: int = 40
    # 0: one caption per row, from position 0. >0: rows of this many tokens cut from "documents" laid
    # end to end, as GPT-2 packs web pages; a document is the captions of one training image
    # ([bos] cap [eos] [bos] cap [eos] ...). Text only, but the LM then learns what real LMs know and a
    # caption-per-row LM never needs: content earlier in the context predicts the next caption. On
    # shapes that is the difference between reading the visual prefix in 250 steps or not at all.
    pack_length: int = 0
    # Keep the (tied) embeddings of ordinary tokens at their random init; only [pad]/[bos]/[eos] learn.
    # Text alone gives interchangeable words (the six colours, left/right, small/large) interchangeable
    # contexts, so a text-only LM on a small closed vocabulary learns near-identical embeddings for them
    # (cosine 0.73-0.96 on shapes) and the frozen LM can neither say which colour the image shows nor
    # remember which one it already said. Random 128-d vectors stay near-orthogonal, as a web-trained
    # LM's embeddings of these words are distinct. The special tokens keep learned embeddings: their
    # job is structural (where a caption starts and ends), not to name anything.
    freeze_embeddings: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.pack_length > self.n_positions:
            raise UserError(f"caption_lm.pack_length ({self.pack_length}) must be <= caption_lm.n_positions "
                            f"({self.n_positions})")
