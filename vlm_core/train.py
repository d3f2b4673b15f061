"""The training loop: cached features in, trained connector/projection/LoRA out.

Only trainable parameters reach the optimizer; each epoch samples ``captions_per_image``
references per training image. A NaN/inf or exploding loss raises TrainingDiverged. With
``scst_epochs`` the cross-entropy epochs are followed by self-critical epochs (see self_critical).
"""
from __future__ import annotations

import math
import random
import time
from typing import Callable

import numpy as np
import torch

from .cider import CiderD
from .data import CaptionData
from .features import FeatureSet
from .language import caption_token_ids
from .configs import TrainConfig
from .model import CaptionModel


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the run is marked failed with this reason."""


LENGTH_GROUP_BATCHES = 50  # batches per length-sorted group (transformers' LengthGroupedSampler: at most 50)


def _sampled_references(data: CaptionData, image_id: str, per_image: int, rng: random.Random) -> list[str]:
    refs = data.captions[image_id]
    return [refs[j % len(refs)] for j in rng.sample(range(max(per_image, len(refs))), per_image)]


def _words(caption: str) -> int:
    return len(caption.split())


def token_length(model: CaptionModel) -> Callable[[str], int]:
    """A caption's length in the model's tokens: what a batch is padded by (on flickr8k-smollm2, groups sorted
    by words left 10% of the LM positions padding, by tokens 1.4%)."""
    return lambda caption: len(caption_token_ids(model.tokenizer, [caption], model.cfg.max_caption_tokens)[0])


def _image_batches(data: CaptionData, ids: list[str], per_image: int, batch_images: int, rng: random.Random,
                   length_grouped: bool = False, length: Callable[[str], int] = _words):
    """Shuffled batches of (rows, captions): ``per_image`` sampled references for each image; with
    ``length_grouped``, batches of similar ``length`` (see TrainConfig.length_grouped)."""
    order = list(range(len(ids)))
    rng.shuffle(order)
    if not length_grouped:
        for i in range(0, len(order), batch_images):
            rows = order[i : i + batch_images]
            caps = []
            for r in rows:
                caps += _sampled_references(data, ids[r], per_image, rng)
            yield rows, caps
        return
    picks = [(r, _sampled_references(data, ids[r], per_image, rng)) for r in order]
    group = batch_images * LENGTH_GROUP_BATCHES
    batches = []
    for i in range(0, len(picks), group):
        chunk = sorted(picks[i : i + group], key=lambda pick: max(length(c) for c in pick[1]))
        batches += [chunk[j : j + batch_images] for j in range(0, len(chunk), batch_images)]
    rng.shuffle(batches)
    for batch in batches:
        yield [r for r, _ in batch], [c for _, caps in batch for c in caps]


@torch.no_grad()
def reference_nll(model: CaptionModel, feats: torch.Tensor, refs: list[list[str]], batch_images: int = 64) -> np.ndarray:
    """Mean NLL/token of each image's references [n_images]; the connector runs once per image."""
    model.eval()
    out = np.zeros(len(refs))
    for i in range(0, len(refs), batch_images):
        chunk = refs[i : i + batch_images]
        counts = {len(r) for r in chunk}
        if len(counts) == 1:  # the usual case: the same number of references per image
            k = counts.pop()
            nll = model.caption_nll(feats[i : i + len(chunk)], [c for r in chunk for c in r], repeats=k)
            out[i : i + len(chunk)] = nll.view(len(chunk), k).mean(1).numpy()
        else:
            for j, r in enumerate(chunk):
                x = feats[i + j : i + j + 1].expand(len(r), *feats.shape[1:])
                out[i + j] = float(model.caption_nll(x, r).mean())
    return out


def dev_loss(model: CaptionModel, feats: torch.Tensor, data: CaptionData, ids: list[str], batch_size: int) -> float:
    return float(reference_nll(model, feats, [data.captions[i] for i in ids], batch_size).mean())


def _checkpoint_row(model: CaptionModel, dev_x: torch.Tensor, data: CaptionData, dev_ids: list[str], cfg: TrainConfig,
                    epoch: float, losses: list[float], start: float) -> dict:
    """A history row: the mean train loss of the steps since the row before, the dev loss now."""
    d_loss = dev_loss(model, dev_x, data, dev_ids, cfg.batch_size)
    return {"epoch": epoch, "train_loss": float(np.mean(losses)), "dev_loss": d_loss, "seconds": round(time.time() - start, 2)}


def _dev_loss_images(dev_feats: FeatureSet, cfg: TrainConfig) -> tuple[torch.Tensor, list[str]]:
    """The first ``cfg.dev_images`` dev images (features in RAM, ids): what every epoch's dev loss is of."""
    n_dev = min(cfg.dev_images, len(dev_feats.ids))
    return torch.from_numpy(np.array(dev_feats.array[:n_dev])).float(), dev_feats.ids[:n_dev]


def _adamw(groups: list[dict], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel for these parameters: ~75 small tensors make the
    per-tensor loop 9 % of a shapes training step on CPU (fused: 2 %). Same update rule."""
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _trainable_groups(model: CaptionModel, lr: float, connector_lr: float) -> tuple[list, list[dict]]:
    """The trainable parameters and their AdamW groups: image path (connector/queries/projection) at
    ``connector_lr`` (0 = lr), the LM's LoRA weights at ``lr``."""
    image_path, adapters = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (adapters if name.startswith("lm.") else image_path).append(p)
    groups = [{"params": image_path, "lr": connector_lr or lr}, {"params": adapters, "lr": lr}]
    return image_path + adapters, [g for g in groups if g["params"]]


def _optimizer(model: CaptionModel, cfg: TrainConfig, n_train: int):
    """AdamW over the trainable parameters (image path and adapters with their own rates), warmup + cosine."""
    params, groups = _trainable_groups(model, cfg.lr, cfg.connector_lr)
    opt = _adamw(groups, cfg)
    total = math.ceil(n_train / cfg.batch_size) * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_share))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    return params, opt, sched, total, warmup


def _update(loss: torch.Tensor, params: list, opt, scaler, cfg: TrainConfig) -> None:
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    scaler.step(opt)
    scaler.update()


def train_model(model: CaptionModel, data: CaptionData, train_feats: FeatureSet, dev_feats: FeatureSet,
                cfg: TrainConfig, seed: int, on_step: Callable[[int, int, float], None] | None = None,
                log: Callable[[str], None] = print, history: list[dict] | None = None,
                before_self_critical: Callable[[CaptionModel], None] | None = None) -> list[dict]:
    """Train in place; returns the per-epoch history [{epoch, train_loss, dev_loss, seconds}] (with
    ``cfg.dev_checks``, rows at fractions of an epoch too, each train loss the mean since the row before), then
    the self-critical epochs' rows if any (see self_critical).

    Pass ``history`` to see the epochs finished so far even when TrainingDiverged is raised;
    ``before_self_critical(model)`` sees the cross-entropy model (e.g. to save it) before self-critical epochs."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    train_x = train_feats.in_ram()
    dev_x, dev_ids = _dev_loss_images(dev_feats, cfg)
    model.connector.fit_feature_stats(train_x)
    params, opt, sched, total, warmup = _optimizer(model, cfg, len(train_feats.ids))
    scst_steps = math.ceil(_scst_images(cfg, len(train_feats.ids)) / cfg.batch_size) * cfg.scst_epochs
    scaler = torch.amp.GradScaler(model.device.type, enabled=model.precision == "fp16")  # fp16 only: loss scaling
    history = [] if history is None else history
    step, first_loss = 0, None
    tokens = token_length(model)
    steps_per_epoch = math.ceil(len(train_feats.ids) / cfg.batch_size)
    checks = {round(k * steps_per_epoch / (cfg.dev_checks + 1)): k for k in range(1, cfg.dev_checks + 1)}
    for epoch in range(1, cfg.epochs + 1):
        start = time.time()
        model.train_trainable_parts()
        losses = []
        batches = _image_batches(data, train_feats.ids, cfg.captions_per_image, cfg.batch_size, rng,
                                 cfg.length_grouped, tokens)
        for in_epoch, (rows, caps) in enumerate(batches, 1):
            loss = model(train_x[torch.as_tensor(rows, device="cpu")], caps, repeats=cfg.captions_per_image,
                         label_smoothing=cfg.label_smoothing)
            step += 1
            if cfg.debug_nan_at_step and step >= cfg.debug_nan_at_step:
                loss = loss * float("nan")
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss is {value} at epoch {epoch}, step {step}")
            first_loss = first_loss if first_loss is not None else value
            if step > warmup and value > cfg.explode_factor * first_loss:
                raise TrainingDiverged(f"loss exploded to {value:.3f} (first loss {first_loss:.3f}) at step {step}")
            _update(loss, params, opt, scaler, cfg)
            sched.step()
            losses.append(value)
            if on_step:
                on_step(step, total + scst_steps, value)
            if in_epoch in checks and in_epoch < steps_per_epoch:
                at = round(epoch - 1 + checks[in_epoch] / (cfg.dev_checks + 1), 4)
                history.append(_checkpoint_row(model, dev_x, data, dev_ids, cfg, at, losses, start))
                log(f"epoch {at:g}: train loss {history[-1]['train_loss']:.4f}  dev loss {history[-1]['dev_loss']:.4f}")
                model.train_trainable_parts()
                losses, start = [], time.time()
        history.append(_checkpoint_row(model, dev_x, data, dev_ids, cfg, epoch, losses, start))
        log(f"epoch {epoch}/{cfg.epochs}: train loss {history[-1]['train_loss']:.4f}  dev loss {history[-1]['dev_loss']:.4f}")
    if cfg.scst_epochs:
        if before_self_critical:
            before_self_critical(model)
        self_critical(model, data, train_feats, dev_feats, cfg, rng,
                      on_step=on_step and (lambda s, _, v: on_step(total + s, total + scst_steps, v)),
                      log=log, history=history)
    model.eval()
    return history


def self_critical(model: CaptionModel, data: CaptionData, train_feats: FeatureSet, dev_feats: FeatureSet,
                  cfg: TrainConfig, rng: random.Random, on_step: Callable[[int, int, float], None] | None = None,
                  log: Callable[[str], None] = print, history: list[dict] | None = None,
                  after_epoch: Callable[[int], None] | None = None) -> list[dict]:
    """``cfg.scst_epochs`` epochs of self-critical sequence training, in place, appended to ``history``.

    Cross-entropy trains the next word of one reference; the metrics score a whole caption against all
    references. Here each image gets ``scst_samples`` captions sampled from the model (or, with
    ``scst_candidates = "beam"``, the beams of a beam search that wide); each is scored with
    CIDEr-D against the image's training references, and its summed log-likelihood is raised by its
    reward minus a baseline: the mean reward of the image's other samples (``scst_baseline = "others"``,
    Luo 2020) or the reward of the image's greedy caption ("greedy", Rennie et al. 2017): samples better
    than the baseline get likelier, worse ones less likely.
    The model stays in eval mode throughout (LoRA dropout off), so the gradient is that of the policy that
    sampled. Constant rate ``scst_lr``; ``after_epoch(epoch)`` lets a dev screen score the model after each
    epoch. Returns the history rows it added ({epoch, phase, scst_loss, reward, dev_loss, seconds})."""
    model.eval()
    history = [] if history is None else history
    train_x = train_feats.in_ram()
    ids = train_feats.ids
    dev_x, dev_ids = _dev_loss_images(dev_feats, cfg)
    reward = CiderD({i: data.captions[i] for i in ids})
    params, groups = _trainable_groups(model, cfg.scst_lr, cfg.scst_lr * (cfg.connector_lr or cfg.lr) / cfg.lr)
    opt = _adamw(groups, cfg)
    scaler = torch.amp.GradScaler(model.device.type, enabled=model.precision == "fp16")
    per_epoch = math.ceil(_scst_images(cfg, len(ids)) / cfg.batch_size)
    total, step, first = per_epoch * cfg.scst_epochs, 0, len(history)
    for epoch in range(1, cfg.scst_epochs + 1):
        start = time.time()
        order = list(range(len(ids)))
        rng.shuffle(order)
        order = order[: _scst_images(cfg, len(ids))]
        losses, rewards = [], []
        for i in range(0, len(order), cfg.batch_size):
            rows = order[i : i + cfg.batch_size]
            loss, r = _self_critical_loss(model, train_x[torch.as_tensor(rows)], [ids[row] for row in rows], reward, cfg)
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(f"self-critical loss is {value} at self-critical epoch {epoch}, step {step}")
            _update(loss, params, opt, scaler, cfg)
            losses.append(value)
            rewards.append(float(r.mean()))
            if on_step:
                on_step(step, total, value)
        d_loss = dev_loss(model, dev_x, data, dev_ids, cfg.batch_size)
        history.append({"epoch": cfg.epochs + epoch, "phase": "scst", "scst_loss": float(np.mean(losses)),
                        "reward": float(np.mean(rewards)), "dev_loss": d_loss, "seconds": round(time.time() - start, 2)})
        log(f"self-critical epoch {epoch}/{cfg.scst_epochs}: mean sample CIDEr-D {history[-1]['reward']:.4f}  "
            f"dev loss {d_loss:.4f}")
        if after_epoch:
            after_epoch(epoch)
    model.eval()
    return history[first:]


def _scst_images(cfg: TrainConfig, available: int) -> int:
    return min(cfg.scst_images, available) if cfg.scst_images else available


def _self_critical_loss(model: CaptionModel, x: torch.Tensor, image_ids: list[str], reward: CiderD,
                        cfg: TrainConfig) -> tuple[torch.Tensor, np.ndarray]:
    """One batch's policy-gradient loss: candidates, their CIDEr-D rewards [B, k], advantage over the baseline
    times each candidate's summed NLL (the ids as sampled, by the policy that sampled). Returns (loss, rewards)."""
    k = cfg.scst_samples
    if cfg.scst_candidates == "beam":
        samples, generated = model.beams_with_ids(x, max_new_tokens=cfg.max_new_tokens, num_beams=k,
                                                  no_repeat_ngram_size=cfg.no_repeat_ngram_size,
                                                  length_penalty=cfg.length_penalty)
    else:
        samples, generated = model.sample_with_ids(x, max_new_tokens=cfg.max_new_tokens, num_samples=k)
    r = np.array([reward.score(image_ids[j // k], c) for j, c in enumerate(samples)]).reshape(len(image_ids), k)
    if cfg.scst_baseline == "greedy":
        greedy = model.generate(x, max_new_tokens=cfg.max_new_tokens)
        baseline = np.array([[reward.score(i, c)] for i, c in zip(image_ids, greedy)])
    else:
        baseline = (r.sum(1, keepdims=True) - r) / (k - 1)
    advantage = torch.from_numpy((r - baseline).ravel()).float()
    nll = model.generated_nll_sums(x, generated, repeats=k)
    return (advantage.to(model.device) * nll).mean(), r
