"""Caption metrics through pycocoevalcap (PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D),
keeping per-image scores for the paired statistics. SPICE downloads CoreNLP on first use, so it
runs only when asked for."""
from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys

import pandas as pd

METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


@contextlib.contextmanager
def quiet_subprocess_stderr():
    """The PTB tokenizer's Java process inherits our stderr and prints 'PTBTokenizer tokenized …'
    there; point file descriptor 2 at /dev/null while it runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def tokenize(refs: dict[str, list[str]], hyps: dict[str, str]) -> tuple[dict, dict]:
    """One PTB tokenizer (Java) call for references and hypotheses together."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    both = {f"r|{k}": [{"caption": c} for c in v] for k, v in refs.items()}
    both.update({f"h|{k}": [{"caption": hyps[k]}] for k in refs})
    with contextlib.redirect_stdout(io.StringIO()), quiet_subprocess_stderr():
        tok = PTBTokenizer().tokenize(both)
    gts = {k: tok[f"r|{k}"] for k in refs}
    res = {k: tok[f"h|{k}"] for k in refs}
    return gts, res


_METEOR = None


def _meteor():
    """One METEOR JVM per process: starting it costs ~12 s, scoring 500 captions ~0.5 s."""
    global _METEOR
    if _METEOR is None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()
        atexit.register(_close_meteor)
    return _METEOR


def _close_meteor() -> None:
    global _METEOR
    if _METEOR is not None:
        with contextlib.suppress(Exception):
            _METEOR.meteor_p.kill()
            _METEOR.meteor_p.wait()
        _METEOR = None


def cider(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.cider.cider import Cider

    score, per = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in per]


def score_tokenized(gts: dict, res: dict, spice: bool = False) -> tuple[dict[str, float], pd.DataFrame]:
    """Corpus scores and a per-image frame (index = image id) from tokenized captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(gts)
    # METEOR's Java side chokes on an empty hypothesis; a lone space scores 0 the same way.
    res_meteor = {k: [res[k][0] if res[k][0].strip() else " "] for k in ids}
    corpus: dict[str, float] = {}
    per: dict[str, list[float]] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        corpus[f"BLEU-{n + 1}"] = float(bleu[n])
        per[f"BLEU-{n + 1}"] = [float(s) for s in bleu_per[n]]
    m, m_per = _meteor().compute_score(gts, res_meteor)
    corpus["METEOR"], per["METEOR"] = float(m), [float(s) for s in m_per]
    r, r_per = Rouge().compute_score(gts, res)
    corpus["ROUGE-L"], per["ROUGE-L"] = float(r), [float(s) for s in r_per]
    corpus["CIDEr"], per["CIDEr"] = cider(gts, res)
    if spice:
        from pycocoevalcap.spice.spice import Spice

        s, s_per = Spice().compute_score(gts, res)
        corpus["SPICE"] = float(s)
        per["SPICE"] = [float(x["All"]["f"]) for x in s_per]
    return corpus, pd.DataFrame(per, index=pd.Index(ids, name="image"))


def score_captions(refs: dict[str, list[str]], hyps: dict[str, str], spice: bool = False):
    gts, res = tokenize(refs, hyps)
    return score_tokenized(gts, res, spice=spice)
