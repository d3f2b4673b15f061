"""Is the image used? Swap probes and degeneracy measures for one trained model.

- generation swap: each test image's caption vs the caption of a randomly paired other image;
- likelihood swap: NLL/token of the references given their own vs the paired image's features;
- perceptual score (Gat et al. 2021): relative CIDEr drop when the images are permuted;
- degeneracy: empty captions, EOS first, distinct-n, unique captions, length, the mode caption;
- EOS probabilities: P(EOS) at the first position from the start the model generates from, from
  the LM's own BOS, and right after a caption's EOS (what an EOS-collapse diagnosis quotes).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from scipy import stats

from vlm_core.model import CaptionModel
from vlm_core.train import reference_nll

from ablations.measure.scoring import cider


def derangement(n: int, seed: int) -> list[int]:
    """A random pairing in which no image is paired with itself (n >= 2).

    A random permutation whose fixed points are swapped with their neighbour (the pairing stored
    runs were probed with); for small n that can leave a fixed point (n = 2 gives the identity),
    and then permutations are drawn until one has none, which is uniform over derangements."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    for i in np.nonzero(perm == np.arange(n))[0]:
        j = (i + 1) % n
        perm[i], perm[j] = perm[j], perm[i]
    while np.any(perm == np.arange(n)):
        perm = rng.permutation(n)
    return [int(p) for p in perm]


def _bleu_pair(a: list[str], b: list[str]) -> float:
    from pycocoevalcap.bleu.bleu import Bleu
    import contextlib
    import io

    gts = {str(i): [b[i]] for i in range(len(a))}
    res = {str(i): [a[i]] for i in range(len(a))}
    with contextlib.redirect_stdout(io.StringIO()):
        score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(score[3])


def generation_swap(captions: list[str], tokenized: list[str], perm: list[int]) -> dict:
    differ = [captions[i] != captions[perm[i]] for i in range(len(captions))]
    safe = [t if t.strip() else "<empty>" for t in tokenized]
    return {
        "swap_rate": float(np.mean(differ)),
        "swap_mutual_bleu4": _bleu_pair(safe, [safe[p] for p in perm]),
    }


def perceptual_score(gts: dict, res: dict, ids: list[str], perm: list[int]) -> dict:
    """Relative CIDEr drop when each image's caption is replaced by its pair's caption."""
    own, _ = cider(gts, res)
    swapped_res = {ids[i]: res[ids[perm[i]]] for i in range(len(ids))}
    swapped, _ = cider(gts, swapped_res)
    return {"cider_swapped": swapped, "perceptual_score": (own - swapped) / own if own > 0 else 0.0}


@torch.no_grad()
def likelihood_swap(model: CaptionModel, feats: torch.Tensor, refs: list[list[str]], perm: list[int]) -> dict:
    """Mean NLL/token of each image's references given its own vs its pair's features."""
    own = reference_nll(model, feats, refs)
    swapped = reference_nll(model, feats[torch.as_tensor(perm, device=feats.device)], refs)
    gap = swapped - own
    p = 1.0 if np.allclose(gap, 0) else float(stats.wilcoxon(swapped, own).pvalue)
    return {"nll_own": float(own.mean()), "nll_swapped": float(swapped.mean()),
            "nll_gap": float(gap.mean()), "nll_gap_p": p, "per_image_nll_gap": gap.tolist()}


def degeneracy(captions: list[str], first_token_ids: list[int], eos_id: int) -> dict:
    n = max(len(captions), 1)
    words = [c.split() for c in captions]
    uni = [w for ws in words for w in ws]
    bi = [tuple(ws[i : i + 2]) for ws in words for i in range(len(ws) - 1)]
    counts = Counter(captions)
    mode, mode_n = counts.most_common(1)[0] if counts else ("", 0)
    return {
        "empty_rate": sum(1 for c in captions if not c.strip()) / n,
        "eos_first_rate": sum(1 for t in first_token_ids if t == eos_id) / n,
        "distinct_1": len(set(uni)) / len(uni) if uni else 0.0,
        "distinct_2": len(set(bi)) / len(bi) if bi else 0.0,
        "unique_share": len(counts) / n,
        "mean_length": float(np.mean([len(w) for w in words])) if words else 0.0,
        "top_caption": mode,
        "top_caption_share": mode_n / n,
    }


@torch.no_grad()
def eos_probabilities(model: CaptionModel, feats: torch.Tensor, captions: list[str], limit: int = 200,
                      batch: int = 50) -> dict:
    """Mean P(EOS) over the first ``limit`` images at three places:

    - ``p_eos_start``: the first generated position, from the start token the model generates from;
    - ``p_eos_bos``: the same, from the LM's own BOS (the correct [visual][BOS] prefix);
    - ``p_eos_after_eos``: right after the EOS that ends a caption written as in training
      ("does EOS follow EOS?", what padding kept in the labels teaches)."""
    n = min(len(captions), limit)
    after = []
    for row in model.encode_captions(captions[:n])[0].tolist():  # as in training, up to the first EOS after the start
        end = next((k for k in range(1, len(row)) if row[k] == model.eos_id), None)
        after.append(row[: end + 1] if end is not None else row + [model.eos_id])
    places = {"p_eos_start": [[model.text.start_id]] * n, "p_eos_bos": [[model.lm_bos_id]] * n,
              "p_eos_after_eos": after}
    out = {}
    for key, rows in places.items():
        p = [model.next_token_probs(feats[i : i + batch], rows[i : i + batch])[:, model.eos_id]
             for i in range(0, n, batch)]
        out[key] = float(torch.cat(p).mean())
    return out
