"""Verdict statistics and measured diagnoses: seed-level false-positive rate by simulation, the
pooled mode caption, EOS-collapse wording from measured numbers, derangements, undefined p-values."""
import math

import numpy as np
import pandas as pd
import pytest

from ablations.report import analysis

from ablations.measure import probes

from ablations.decide import verdicts
from ablations.report.collect import TableRuns
from ablations.decide.power import Arms, seeds_needed
from ablations.decide.stats import decide, one_sample, paired_difference, welch
from ablations.tables import load_table

from .micro import write_micro


# ---------------------------------------------------------------- simulation of the verdict statistics
def _table(rng, n_seeds, shift, n_images=120, seed_sd=0.3, image_sd=0.05):
    """Per-image scores (images x seeds) for a variant and the reference: shared image difficulty, a
    per-run offset (seed noise, much larger than image noise) and per-image noise."""
    difficulty = rng.normal(1.0, 0.5, n_images)

    def runs(mean):
        return pd.DataFrame({s: mean + difficulty + rng.normal(0, seed_sd) + rng.normal(0, image_sd, n_images)
                             for s in range(n_seeds)})

    return runs(shift), runs(0.0)


def _rates(tmp_path, n_seeds, shift, tables=200):
    """Share of simulated tables where the report's verdict rule, and the old image-only method, call
    meanpool different from full."""
    table = load_table(str(write_micro(tmp_path / "sim.toml", seeds=range(n_seeds), variants=("full", "meanpool"))))
    rng = np.random.default_rng(1000 + n_seeds)
    seed_hits = image_hits = 0
    for _ in range(tables):
        variant, reference = _table(rng, n_seeds, shift)
        table_runs = TableRuns(table, tmp_path, pd.DataFrame(), ["full", "meanpool"])
        table_runs.per_image = {"full": {s: reference[[s]].set_axis(["CIDEr"], axis=1) for s in reference},
                        "meanpool": {s: variant[[s]].set_axis(["CIDEr"], axis=1) for s in variant}}
        (test,) = verdicts.decide_family(verdicts.rule_worse_than_reference(table_runs, "meanpool"))
        seed_hits += test.decision != "inconclusive"  # a difference either way
        old = paired_difference(variant.mean(axis=1).to_numpy(), reference.mean(axis=1).to_numpy(), n_resamples=200)
        image_hits += not (old["ci_low"] <= 0 <= old["ci_high"])
    return seed_hits / tables, image_hits / tables


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_seed_level_verdicts_keep_their_false_positive_rate(n_seeds, tmp_path):
    seed_fpr, image_fpr = _rates(tmp_path, n_seeds, shift=0.0)
    assert seed_fpr <= 0.08, seed_fpr
    assert image_fpr >= 0.5, image_fpr  # what the image-only method called a difference with equal true means


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_seed_level_verdicts_detect_a_large_shift(n_seeds, tmp_path):
    power, _ = _rates(tmp_path, n_seeds, shift=-4 * 0.3, tables=100)  # four seed SDs
    assert power >= 0.6, power


def test_welch_matches_scipy_and_never_invents_p_zero():
    from scipy import stats

    x, y = np.array([1.0, 1.4, 0.9, 1.2]), np.array([0.5, 0.7, 0.4])
    i = welch(x, y)
    assert i.p == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue)
    assert i.low < i.estimate < i.high and i.estimate == pytest.approx(x.mean() - y.mean())
    constant = welch(np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    assert constant.low == constant.high == 1.0 and math.isnan(constant.p)
    assert math.isnan(welch(np.array([1.0]), np.array([0.0, 1.0])).low)  # one seed: no CI
    assert decide(welch(np.array([1.0]), np.array([0.0, 1.0])), 0.0, "below") == "inconclusive"
    assert math.isnan(paired_difference(np.array([1.0]), np.array([0.0]))["p_wilcoxon"])
    same_shift = paired_difference(np.ones(10), np.zeros(10))
    assert same_shift["ci_low"] == same_shift["ci_high"] == 1.0 and 0 < same_shift["p_wilcoxon"] < 0.01


def test_one_sample_decide_and_seeds_needed():
    assert decide(one_sample(np.array([0.95, 0.97, 0.99])), 0.9, "above") == "held"
    assert decide(one_sample(np.array([0.5, 0.6, 0.55])), 0.9, "above") == "not held"
    assert decide(one_sample(np.array([0.5, 0.99, 0.95])), 0.9, "above") == "inconclusive"
    assert decide(one_sample(np.zeros(3)), 0.05, "below") == "inconclusive"  # no spread: a point decides nothing
    assert decide(one_sample(np.zeros(3), 0.05, floor=0.01), 0.05, "below") == "held"  # floored: a real CI
    rate = one_sample(np.array([0.6, 1.0, 1.0]), limits=(0.0, 1.0))  # a share's CI stays within [0, 1]
    assert rate.high == 1.0 and rate.low < 0.6 and one_sample(np.array([0.6, 1.0, 1.0])).high > 1.0
    small, large = seeds_needed(-0.3, Arms(0.25, 0.2)), seeds_needed(-1.0, Arms(0.25, 0.2))
    assert small > large >= 2 and seeds_needed(0.0, Arms(0.2, 0.2)) is None


# ---------------------------------------------------------------- measured descriptions
def _runs(tmp_path, captions: dict[int, dict[str, str]], variant="seed-recipe", **means) -> TableRuns:
    table = load_table(str(write_micro(tmp_path / "micro.toml", seeds=tuple(captions))))
    runs = pd.DataFrame([{"variant": variant, "seed": s, **means} for s in captions])
    table_runs = TableRuns(table, tmp_path, runs, [variant])
    table_runs.captions[variant] = captions
    table_runs.configs[variant] = {"model": {"recipe": "seed" if variant == "seed-recipe" else "fixed"}}
    return table_runs


def test_most_frequent_caption_is_counted_over_every_caption_of_every_seed(tmp_path):
    # Seed 0's mode is "a red circle" (3 of 5), seed 1's is "a blue square" (3 of 5), but over all ten
    # captions "a green triangle" is the most frequent (4 of 10): a mode of per-seed modes gets it wrong.
    seed0 = ["a red circle"] * 3 + ["a green triangle"] * 2
    seed1 = ["a blue square"] * 3 + ["a green triangle"] * 2
    caps = {0: {f"i{k}": c for k, c in enumerate(seed0)}, 1: {f"i{k}": c for k, c in enumerate(seed1)}}
    table_runs = _runs(tmp_path, caps, variant="blind")
    assert analysis.pooled_mode(table_runs, "blind") == ("a green triangle", 0.4, 10)
    caps2 = {0: {f"i{k}": "a green triangle" if k < 3 else f"x{k}" for k in range(5)},
             1: {f"i{k}": "a green triangle" if k < 3 else f"y{k}" for k in range(5)}}
    tr2 = _runs(tmp_path, caps2, variant="blind")
    s = pd.Series({"empty_rate": 0.0, "eos_first_rate": 0.0, "unique_share": 0.6, "swap_rate": 0.0, "nll_gap": 0.0})
    text = analysis.diagnose(tr2, "blind", s)
    assert "60% of all 10 captions (2 seeds) are “a green triangle”" in text


def test_eos_collapse_diagnosis_quotes_measured_probabilities_and_locates_a_partial_collapse(tmp_path):
    ids = [f"img{i}" for i in range(9)]
    ref_length = pd.Series({i: float(n) for n, i in enumerate(ids)})  # img0 shortest ... img8 longest
    caps = {s: {i: ("" if n < 3 or (n == 3 and s == 0) else "a red circle") for n, i in enumerate(ids)} for s in (0, 1)}
    table_runs = _runs(tmp_path, caps)
    assert analysis.empty_by_length(table_runs, "seed-recipe", ref_length) == (1.0, 0.0)
    assert analysis.empty_by_length(table_runs, "seed-recipe", None) is None
    s = pd.Series({"empty_rate": 0.6, "eos_first_rate": 0.6, "unique_share": 0.2,
                   "p_eos_start": 0.83, "p_eos_bos": 0.12, "p_eos_after_eos": 0.97})
    text = analysis.diagnose(table_runs, "seed-recipe", s, (1.0, 0.0))
    assert "P(EOS) at the first position is 0.83 from the prefix this variant generates from ([visual][EOS])" in text
    assert "0.12 from the correct [visual][BOS] prefix, and 0.97 right after the EOS" in text
    assert "EOS follows EOS (P = 0.97)" in text and "from the correct prefix P(EOS) is 0.12" in text
    assert "100% empty on the third of images with the shortest references, 0% on the third with the longest" in text
    # Numbers that do not support a cause do not produce one.
    calm = analysis.diagnose(table_runs, "seed-recipe", s.replace({0.97: 0.05, 0.83: 0.9, 0.12: 0.88}), (0.6, 0.55))
    assert "EOS follows EOS" not in calm and "The start token is not the cause" in calm
    assert "caption length does not explain" in calm


def test_eos_probabilities_measure_at_the_right_places():
    """A stand-in model whose P(EOS) is 0.9 after an EOS and 0.1 after anything else."""

    class Text:
        start_id = 2

    class Model:
        eos_id, lm_bos_id, text = 2, 1, Text()

        def encode_captions(self, captions):
            import torch

            ids = torch.tensor([[5, 6, 2, 2], [7, 2, 2, 2]])  # seed-recipe layout: caption, then EOS padding
            return ids, None, None

        def next_token_probs(self, feats, rows):
            import torch

            p = torch.full((len(rows), 4), 0.0)
            p[:, 2] = torch.tensor([0.9 if r[-1] == 2 else 0.1 for r in rows])
            self.rows = getattr(self, "rows", []) + [rows]
            return p

    import torch

    m = Model()
    out = probes.eos_probabilities(m, torch.zeros(2, 1, 1), ["a b", "c"])
    assert out == pytest.approx({"p_eos_start": 0.9, "p_eos_bos": 0.1, "p_eos_after_eos": 0.9})
    assert m.rows[2] == [[5, 6, 2], [7, 2]]  # up to and including the EOS that ends each caption


# ---------------------------------------------------------------- derangement
@pytest.mark.parametrize("n", range(2, 51))
def test_derangement_has_no_fixed_point(n):
    for seed in range(40):
        perm = probes.derangement(n, seed)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm)), (n, seed)


def test_derangement_refuses_fewer_than_two():
    with pytest.raises(ValueError):
        probes.derangement(1, 0)


def test_welch_never_takes_a_seed_sd_below_the_image_level_floor():
    """Three nearly identical seeds on each side and a difference smaller than a run's image-level SE: without
    the floors the spread (1e-6) makes it 'decided'; with them it is not."""
    x, y = np.array([0.5, 0.500001, 0.499999]), np.array([0.501, 0.501001, 0.500999])
    assert welch(x, y).p < 0.05  # what the floor is for
    floored = welch(x, y, 0.01, 0.01)
    assert floored.p > 0.05 and floored.low < 0 < floored.high


def test_stage_time_reports_each_variants_runs_and_its_fastest_and_slowest_whole_run():
    seconds = pd.DataFrame([
        {"variant": "full", "seed": 0, "train": 100.0, "generate": 10.0, "score": 1.0, "probe": 9.0},   # 120
        {"variant": "full", "seed": 1, "train": 200.0, "generate": 20.0, "score": 2.0, "probe": 18.0},  # 240
        {"variant": "blind", "seed": 0, "train": 50.0, "generate": 5.0, "score": 1.0, "probe": 4.0},    # 60
    ])
    t = analysis.stage_time(seconds, ["full", "blind"])
    assert list(t.index) == ["full", "blind"]
    assert t.loc["full", "runs"] == 2 and t.loc["blind", "runs"] == 1
    assert t.loc["full", "train"] == pytest.approx(150.0)
    assert (t.loc["full", "whole_min"], t.loc["full", "whole_mean"], t.loc["full", "whole_max"]) == (120.0, 180.0, 240.0)
    assert t.loc["blind", "whole_min"] == t.loc["blind", "whole_max"] == 60.0
    assert analysis.stage_time(pd.DataFrame(), ["full"]).empty
