"""Caption metrics, one registry (CAPTION_METRICS): pycocoevalcap's (PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L,
CIDEr-D) for every run, and opt-in ones a table names in ``probes.metrics``: SPICE (it downloads CoreNLP on first
use) and sacreBLEU (`pip install -e ".[sacrebleu]"`; no Java). Per-image scores are kept for the paired statistics."""
from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

import pandas as pd

from vlm_core.errors import UserError

# What a scorer returns: corpus value and per-image values (in the order of the captions' ids) of each column.
Scores = tuple[dict[str, float], dict[str, list[float]]]


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


@dataclass
class Captions:
    """One split's captions by image id: as written, and PTB-tokenized (gts, res) once a metric that needs Java
    is scored, so that Java-free metrics alone start no JVM."""

    refs: dict[str, list[str]]
    hyps: dict[str, str]
    gts: dict | None = None
    res: dict | None = None

    def tokenized(self) -> Captions:
        if self.gts is None:
            self.gts, self.res = tokenize(self.refs, self.hyps)
        return self


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


def _bleu(c: Captions) -> Scores:
    from pycocoevalcap.bleu.bleu import Bleu

    with contextlib.redirect_stdout(io.StringIO()):
        bleu, bleu_per = Bleu(4).compute_score(c.gts, c.res, verbose=0)
    return ({f"BLEU-{n + 1}": float(bleu[n]) for n in range(4)},
            {f"BLEU-{n + 1}": [float(s) for s in bleu_per[n]] for n in range(4)})


def _meteor_scores(c: Captions) -> Scores:
    # METEOR's Java side chokes on an empty hypothesis; a lone space scores 0 the same way.
    res = {k: [v[0] if v[0].strip() else " "] for k, v in c.res.items()}
    m, per = _meteor().compute_score(c.gts, res)
    return {"METEOR": float(m)}, {"METEOR": [float(s) for s in per]}


def _rouge(c: Captions) -> Scores:
    from pycocoevalcap.rouge.rouge import Rouge

    r, per = Rouge().compute_score(c.gts, c.res)
    return {"ROUGE-L": float(r)}, {"ROUGE-L": [float(s) for s in per]}


def _cider(c: Captions) -> Scores:
    corpus, per = cider(c.gts, c.res)
    return {"CIDEr": corpus}, {"CIDEr": per}


def _spice(c: Captions) -> Scores:
    from pycocoevalcap.spice.spice import Spice

    s, per = Spice().compute_score(c.gts, c.res)
    return {"SPICE": float(s)}, {"SPICE": [float(x["All"]["f"]) for x in per]}


def _sacrebleu(c: Captions) -> Scores:
    """BLEU-4 as sacreBLEU computes it, on the captions as written (its own 13a tokenizer, lowercased: no Java),
    on pycocoevalcap's 0..1 scale; per image its smoothed sentence BLEU. Signature: nrefs:var|case:lc|eff:no|tok:13a|
    smooth:exp (per image eff:yes)."""
    from sacrebleu.metrics import BLEU

    ids = list(c.refs)
    hyps, refs = [c.hyps[k] for k in ids], [c.refs[k] for k in ids]
    streams = [[r[n] if n < len(r) else None for r in refs] for n in range(max(map(len, refs)))]  # None: no nth ref
    corpus = BLEU(lowercase=True).corpus_score(hyps, streams).score / 100
    sentence = BLEU(lowercase=True, effective_order=True)
    return {"sacreBLEU": corpus}, {"sacreBLEU": [sentence.sentence_score(h, r).score / 100 for h, r in zip(hyps, refs)]}


@dataclass(frozen=True)
class Metric:
    """A caption metric as the harness knows it: the columns ``score`` writes (corpus and per image); ``opt_in``:
    computed only for a table that names it in ``probes.metrics`` (it costs, downloads, or is not in the shipped
    reports); ``java``: needs Java (pycocoevalcap's jars, the PTB tokenizer); ``target``: its columns may be a
    [targets] key and an expectation's quantity; ``package``: a module it needs beyond the required ones, installed
    by the extra of that name."""

    columns: tuple[str, ...]
    score: Callable[[Captions], Scores]
    opt_in: bool = False
    java: bool = True
    target: bool = True
    package: str = ""


# The one list of metrics, by the name a table gives (probes.metrics); the order is the reports' column order.
CAPTION_METRICS: dict[str, Metric] = {
    "BLEU": Metric(("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"), _bleu),
    "METEOR": Metric(("METEOR",), _meteor_scores),
    "ROUGE-L": Metric(("ROUGE-L",), _rouge),
    "CIDEr": Metric(("CIDEr",), _cider),
    "SPICE": Metric(("SPICE",), _spice, opt_in=True),
    "sacreBLEU": Metric(("sacreBLEU",), _sacrebleu, opt_in=True, java=False, package="sacrebleu"),
}
METRICS = [col for m in CAPTION_METRICS.values() if not m.opt_in for col in m.columns]  # every run has these
OPT_IN_METRICS = [name for name, m in CAPTION_METRICS.items() if m.opt_in]
METRIC_COLUMNS = [col for m in CAPTION_METRICS.values() for col in m.columns]
TARGET_METRICS = [col for m in CAPTION_METRICS.values() if m.target for col in m.columns]


def chosen_metrics(opt_in: Iterable[str] = ()) -> list[str]:
    """Every metric that is not opt-in, and the opt-in ones named, in registry order."""
    named = set(opt_in)
    return [name for name, m in CAPTION_METRICS.items() if not m.opt_in or name in named]


def check_installed(names: Iterable[str]) -> None:
    """A metric whose package is missing is refused before anything trains, not after."""
    for name in names:
        package = CAPTION_METRICS[name].package
        if package and importlib.util.find_spec(package) is None:
            raise UserError(f"probes.metrics: {name} needs the {package} package: pip install -e '.[{package}]'")


def score(captions: Captions, names: Iterable[str]) -> tuple[dict[str, float], pd.DataFrame]:
    """Corpus scores and a per-image frame (index = image id) of the named metrics."""
    metrics = [CAPTION_METRICS[n] for n in names]
    if any(m.java for m in metrics):
        captions.tokenized()
    corpus: dict[str, float] = {}
    per: dict[str, list[float]] = {}
    for m in metrics:
        c, p = m.score(captions)
        corpus.update(c)
        per.update(p)
    return corpus, pd.DataFrame(per, index=pd.Index(list(captions.refs), name="image"))


def score_captions(refs: dict[str, list[str]], hyps: dict[str, str], opt_in: Iterable[str] = ()):
    return score(Captions(refs, hyps), chosen_metrics(opt_in))
