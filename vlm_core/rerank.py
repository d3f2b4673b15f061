"""Consensus reranking of beam candidates: minimum-Bayes-risk decoding with CIDEr-D as the utility.

Beam search returns the candidate the model finds most likely; captioning metrics reward the caption a
crowd of describers would agree on. Of an image's candidates, this keeps the one with the highest
CIDEr-D against evidence from the model itself: the image's other candidates, or captions sampled
from the model (an estimate of the expected CIDEr under the model's distribution). pycocoevalcap's
scorer; n-gram weights from all evidence of the batch. It uses no reference captions, so it is a
decoding rule like beam search. The n-gram weights need many images: captioning a single image with
sampled evidence gives every candidate the same weightless evidence, so the top beam is kept.
"""
from __future__ import annotations

from pycocoevalcap.cider.cider import Cider

from .cider import words


def consensus_choice(candidates: list[list[str]], evidence: list[list[str]] | None = None) -> list[int]:
    """Index of the chosen candidate for each image. The evidence of a candidate is ``evidence[j]``
    (e.g. sampled captions of image j) or, without it, the image's other candidates; an image without
    any evidence keeps its first candidate."""
    gts, res, keys = {}, {}, []
    for j, cands in enumerate(candidates):
        tokens = [words(c) for c in cands]
        for i, w in enumerate(tokens):
            refs = ([words(e) for e in evidence[j]] if evidence is not None
                    else [o for k, o in enumerate(tokens) if k != i])
            if not refs:
                continue
            key = f"{j}:{i}"
            res[key], gts[key] = [w], refs
            keys.append((j, i))
    best = {j: (float("-inf"), 0) for j in range(len(candidates))}
    if keys:
        _, scores = Cider().compute_score(gts, res)
        for (j, i), s in zip(keys, scores):
            if s > best[j][0]:  # ties keep the likelier (earlier) candidate
                best[j] = (float(s), i)
    return [best[j][1] for j in range(len(candidates))]
