"""Scoring wrapper vs direct pycocoevalcap; statistics on synthetic data with a known answer."""
import numpy as np
import pandas as pd
import pytest

from ablations.measure.scoring import METRICS, score_captions
from ablations.decide.stats import mean_std, paired_difference

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


def test_sacrebleu_is_sacrebleus_own_score_and_needs_no_java(tmp_path, monkeypatch):
    import sacrebleu

    from ablations.measure.scoring import Captions, score

    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no java: a Java metric would fail here
    refs = {k: [c.capitalize() for c in v] for k, v in REFS.items()}  # sacreBLEU is case-sensitive unless told
    captions = Captions(refs, HYPS)
    corpus, per = score(captions, ["sacreBLEU"])
    assert captions.gts is None  # not tokenized: no JVM started
    hyps, refs = list(HYPS.values()), list(refs.values())
    direct = sacrebleu.corpus_bleu(hyps, [list(r) for r in zip(*refs)], lowercase=True).score / 100
    assert corpus == {"sacreBLEU": pytest.approx(direct)} and 0 < direct < 1
    assert per["sacreBLEU"].tolist() == pytest.approx([sacrebleu.sentence_bleu(h, r, lowercase=True).score / 100
                                                       for h, r in zip(hyps, refs)])
    assert per.loc["3", "sacreBLEU"] == 0 and list(per.index) == list(REFS)


def test_an_opt_in_metric_runs_only_when_named_and_changes_nothing_else():
    corpus, per = score_captions(REFS, HYPS, opt_in=["sacreBLEU"])
    default, default_per = score_captions(REFS, HYPS)
    assert list(per.columns) == METRICS + ["sacreBLEU"] and list(default_per.columns) == METRICS
    assert {k: v for k, v in corpus.items() if k != "sacreBLEU"} == default


def test_a_table_opts_in_by_name_and_its_other_runs_keep_their_hash(tmp_path):
    from ablations.run.planning import expected_hash, run_config
    from ablations.run.identity import config_hash
    from ablations.tables import TARGET_KEYS, load_table
    from vlm_core.errors import UserError

    from .micro import write_micro

    def cell_hash(probes: str) -> str:
        table = load_table(str(write_micro(tmp_path / "m.toml", variants=("full",), extra=probes)))
        return expected_hash(table, table.variants["full"], 0)

    plain = cell_hash("")
    table = load_table(str(write_micro(tmp_path / "m.toml", variants=("full",))))
    before = run_config(table, table.variants["full"], 0, "test")
    del before["probes"]["metrics"]  # a run stored before the key existed
    assert config_hash(before) == plain == cell_hash("[probes]\nmetrics = []\n")  # at its default: not in the hash
    assert cell_hash('[probes]\nmetrics = ["sacreBLEU"]\n') != plain
    assert cell_hash('[probes]\nmetrics = ["SPICE"]\n') == cell_hash("[probes]\nspice = true\n")  # one setting, one hash
    table = load_table(str(write_micro(tmp_path / "m.toml", extra='[probes]\nmetrics = ["sacreBLEU", "SPICE"]\n')))
    assert table.probes.opt_in_metrics == ["SPICE", "sacreBLEU"] and "sacreBLEU" in TARGET_KEYS
    with pytest.raises(UserError, match="probes.metrics: 'BLUE' is not an opt-in metric; known: SPICE, sacreBLEU"):
        load_table(str(write_micro(tmp_path / "m.toml", extra='[probes]\nmetrics = ["BLUE"]\n')))


def test_a_metric_whose_package_is_missing_is_refused_before_training(monkeypatch):
    import importlib.util

    from ablations.measure.scoring import check_installed
    from vlm_core.errors import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    check_installed(["SPICE"])
    with pytest.raises(UserError, match=r"sacreBLEU needs the sacrebleu package: pip install -e '.\[sacrebleu\]'"):
        check_installed(["sacreBLEU"])


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
