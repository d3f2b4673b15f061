"""CIDEr-D with document frequencies fixed from a corpus: the reward of self-critical training.

pycocoevalcap's scorer (what the reports use) takes its n-gram document frequencies from the references
it is handed, which is right for scoring a split and wrong for a 32-image training batch (weights from 32
images are noise). This is the same formula, pycocoevalcap's n-gram counting, with the frequencies
counted once over the training references; given a split's own references it matches pycocoevalcap.
"""
from __future__ import annotations

import math
import re
from collections import Counter

from pycocoevalcap.cider.cider_scorer import precook


def words(text: str) -> str:
    """Lower-cased alphanumeric words, space-joined: the tokens CIDEr-D counts."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


class CiderD:
    """CIDEr-D (Vedantam et al. 2015) of a candidate caption against the references of its image:
    mean over n = 1..4 of the clipped tf-idf cosine with each reference, a Gaussian length penalty
    (sigma 6), averaged over references, x 10 -- as pycocoevalcap computes it."""

    def __init__(self, references: dict[str, list[str]], n: int = 4, sigma: float = 6.0):
        if not references:
            raise ValueError("CiderD needs at least one image's references")
        self.n, self.sigma = n, sigma
        cooked = {key: [precook(words(r), n) for r in refs] for key, refs in references.items()}
        self.document_frequency = Counter(g for refs in cooked.values() for g in {g for r in refs for g in r})
        self.log_documents = math.log(len(cooked))
        self.reference_vectors = {key: [self._vector(r) for r in refs] for key, refs in cooked.items()}

    def _vector(self, counts: dict) -> tuple[list[dict], list[float], int]:
        vec, norm, length = [{} for _ in range(self.n)], [0.0] * self.n, 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            weight = tf * (self.log_documents - math.log(max(1.0, self.document_frequency[gram])))
            vec[k][gram] = weight
            norm[k] += weight * weight
            if k == 1:  # pycocoevalcap's "length" counts bigrams; kept so the scores agree with it
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def score(self, key: str, candidate: str) -> float:
        """CIDEr-D of ``candidate`` against the references stored for image ``key``."""
        vec, norm, length = self._vector(precook(words(candidate), self.n))
        refs = self.reference_vectors[key]
        total = 0.0
        for ref_vec, ref_norm, ref_length in refs:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * self.sigma ** 2))
            for k in range(self.n):
                value = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in vec[k].items())
                if norm[k] and ref_norm[k]:
                    value /= norm[k] * ref_norm[k]
                total += value * penalty / self.n
        return 10.0 * total / len(refs)
