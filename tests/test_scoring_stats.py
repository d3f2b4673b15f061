"""Scoring wrapper vs direct pycocoevalcap; statistics on synthetic data with a known answer."""
import numpy as np
import pandas as pd
import pytest

from ablations.scoring import METRICS, score_captions
from ablations.stats import mean_std, paired_difference

REFS = {
    "1": ["a dog runs on the grass", "the brown dog is running", "a dog plays outside"],
    "2": ["a man rides a red bike", "a cyclist on the road", "a person riding a bicycle"],
    "3": ["two children play in the sand", "kids playing at the beach", "children on a beach"],
    "4": ["a woman holds an umbrella", "a lady with an umbrella in the rain", "a woman in the rain"],
}
HYPS = {"1": "a dog runs on grass", "2": "a man riding a bike", "3": "", "4": "a woman in the rain ."}


def test_wrapper_matches_direct_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    corpus, per = score_captions(REFS, HYPS)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in HYPS.items()})
    bleu, bleu_per = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_per = Rouge().compute_score(gts, res)
    cider, cider_per = Cider().compute_score(gts, res)
    res_m = {k: [v[0] if v[0].strip() else " "] for k, v in res.items()}  # METEOR needs a non-empty line
    meteor_scorer = Meteor()
    meteor, meteor_per = meteor_scorer.compute_score(gts, res_m)
    del meteor_scorer
    for n in range(4):
        assert corpus[f"BLEU-{n + 1}"] == pytest.approx(bleu[n])
        assert per[f"BLEU-{n + 1}"].tolist() == pytest.approx(bleu_per[n])
    assert corpus["ROUGE-L"] == pytest.approx(rouge) and per["ROUGE-L"].tolist() == pytest.approx(list(rouge_per))
    assert corpus["CIDEr"] == pytest.approx(cider) and per["CIDEr"].tolist() == pytest.approx(list(cider_per))
    assert corpus["METEOR"] == pytest.approx(meteor) and per["METEOR"].tolist() == pytest.approx(meteor_per)
    assert list(per.columns) == METRICS and list(per.index) == list(REFS)
    assert per.loc["3"].eq(0).all()  # the empty caption scores zero everywhere


def test_paired_difference_detects_known_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(1.0, 0.3, 400)
    worse = ref - 0.2 + rng.normal(0, 0.1, 400)
    r = paired_difference(worse, ref)
    assert r["ci_low"] < -0.2 < r["ci_high"] and r["ci_high"] < 0 and r["p_wilcoxon"] < 1e-6
    same = paired_difference(ref + rng.normal(0, 0.1, 400), ref)
    assert same["ci_low"] < 0 < same["ci_high"] and same["p_wilcoxon"] > 0.01


def test_mean_std_over_seeds():
    runs = pd.DataFrame({"variant": ["a", "a", "b", "b", "c"], "seed": [0, 1, 0, 1, 0],
                         "CIDEr": [1.0, 3.0, 2.0, 2.0, 5.0]})
    s = mean_std(runs, ["CIDEr"])
    assert s.loc["a", "CIDEr"] == 2.0 and s.loc["a", "CIDEr_std"] == pytest.approx(np.sqrt(2))
    assert s.loc["b", "CIDEr_std"] == 0.0 and s.loc["a", "seeds"] == 2
    # One seed: no spread to report (the report then prints the mean alone, not "± 0").
    assert s.loc["c", "CIDEr"] == 5.0 and np.isnan(s.loc["c", "CIDEr_std"]) and s.loc["c", "seeds"] == 1


def test_partial_collapse_is_located_by_reference_length(tmp_path):
    """Empty captions on the short-reference images only: the diagnosis says where the collapse happens."""
    import json

    from ablations.report import _empty_by_length, diagnose
    from ablations.tables import load_table

    from .micro import write_micro

    table = load_table(write_micro(tmp_path / "micro.toml"))
    ids = [f"img{i}" for i in range(9)]
    ref_length = pd.Series({i: float(n) for n, i in enumerate(ids)})  # img0 shortest ... img8 longest
    for seed in table.seeds:
        run = tmp_path / "runs" / table.name / "seed-recipe" / f"seed-{seed}"
        run.mkdir(parents=True)
        # empty on the 3 shortest, on img3 for seed 0 only, never on the 3 longest
        caps = {i: ("" if n < 3 or (n == 3 and seed == table.seeds[0]) else "a red circle") for n, i in enumerate(ids)}
        (run / "captions.json").write_text(json.dumps(caps))
        (run / "DONE").write_text("")
    short, long = _empty_by_length(table, tmp_path / "runs", "seed-recipe", ref_length)
    assert (short, long) == (1.0, 0.0)
    summary = pd.Series({"empty_rate": 0.6, "eos_first_rate": 0.6, "top_caption": "", "top_caption_share": 0.6,
                         "unique_share": 0.2})
    text = diagnose(table, "seed-recipe", summary, (short, long))
    assert "EOS collapse (60% empty" in text and "100% empty on the images with the shortest references" in text
    assert "0% on those with the longest: where the training captions ran long" in text
    level = diagnose(table, "seed-recipe", summary, (0.6, 0.55))
    assert "caption length does not explain" in level and "ran long" not in level
    assert "partial" not in diagnose(table, "seed-recipe", summary.replace(0.6, 0.97), (short, long))
    assert _empty_by_length(table, tmp_path / "runs", "seed-recipe", None) is None
