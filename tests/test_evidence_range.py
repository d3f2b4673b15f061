"""The GPU check's comparison with the committed evidence (ablations/run/evidence_range.py): tolerances come from
the evidence's seed spread; a run that is one more seed passes, one many seed SDs off fails."""
import math

import numpy as np
import pytest
from scipy import stats

from ablations.run import evidence_range
from ablations.run.provenance import REPO_ROOT
from ablations.run.record import RunRecord

EVIDENCE = REPO_ROOT / "reports" / "shapes" / "runs"
SEEDS = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def full():
    return evidence_range.Spread.of(EVIDENCE, "full", SEEDS)


def test_the_bound_is_the_prediction_interval_for_one_more_seed():
    # n seeds, m comparisons: t(1 - 0.05 / 2m, n - 1) * sqrt(1 + 1/n), from scipy, not a number typed here
    assert evidence_range.bound(5, 1) == pytest.approx(stats.t.ppf(0.975, 4) * math.sqrt(1.2))
    assert evidence_range.bound(5, 10) > evidence_range.bound(5, 1)  # more comparisons, a wider band each
    with pytest.raises(ValueError):
        evidence_range.bound(1, 1)


def test_each_committed_seed_lies_within_the_band_of_the_others(full):
    """Leave one seed out: the evidence's own runs are 'one more seed' of the rest, so each must pass."""
    for seed in SEEDS:
        rest = evidence_range.Spread({s: q for s, q in full.seeds.items() if s != seed}, full.image_se)
        rows = evidence_range.compare("x", full.seeds[seed], seed, rest, ["CIDEr", "BLEU-4", "nll_gap"], 3)
        assert len(rows) == 3 and all(r.ok for r in rows), [r.text() for r in rows if not r.ok]


def test_a_run_many_seed_sds_off_fails_and_says_by_how_much(full):
    values = dict(full.seeds[0])
    xs = [q["CIDEr"] for q in full.seeds.values()]
    sd = max(np.std(xs, ddof=1), full.image_se["CIDEr"])
    values["CIDEr"] = float(np.mean(xs)) - 10 * sd  # e.g. captions broken on the device
    (row,) = evidence_range.compare("gpu full seed 0", values, 0, full, ["CIDEr"], 1)
    assert not row.ok and row.seed_sds == pytest.approx(-10)
    assert row.same_seed == full.seeds[0]["CIDEr"] and "-10.00 SD" in row.text()
    inside = dict(values, CIDEr=float(np.mean(xs)) + 0.9 * row.bound * sd)
    assert evidence_range.compare("x", inside, 0, full, ["CIDEr"], 1)[0].ok


def test_the_sd_is_floored_by_the_image_level_se(full):
    """Identical seeds (no spread) still leave the images' noise as the unit, as the report's tests floor it."""
    same = evidence_range.Spread({s: dict(full.seeds[0]) for s in SEEDS}, full.image_se)
    (row,) = evidence_range.compare("x", dict(full.seeds[0], CIDEr=full.seeds[0]["CIDEr"] + 0.01), 0, same, ["CIDEr"], 1)
    assert row.sd == pytest.approx(full.image_se["CIDEr"]) and row.sd > 0 and row.ok


def test_a_quantity_nothing_moves_must_agree_exactly():
    blind = evidence_range.Spread.of(EVIDENCE, "blind", SEEDS)
    assert {q["nll_gap"] for q in blind.seeds.values()} == {0.0}  # the blind model ignores its image
    ok, = evidence_range.compare("x", {"nll_gap": 0.0}, 0, blind, ["nll_gap"], 1)
    off, = evidence_range.compare("x", {"nll_gap": 1e-9}, 0, blind, ["nll_gap"], 1)
    assert ok.ok and not off.ok and off.seed_sds == math.inf


def test_waiting_runs_are_not_part_of_the_spread(tmp_path):
    """A record still 'to score' has no metrics yet: it must not count as a seed with missing values."""
    import shutil

    for seed in (0, 1, 2):
        shutil.copytree(EVIDENCE / "full" / f"seed-{seed}", tmp_path / "full" / f"seed-{seed}")
    record = RunRecord(tmp_path / "full" / "seed-2")
    m = record.metrics()
    m["to_score"] = {"metrics": ["CIDEr"], "probes": []}
    (record.path / "metrics.json").write_text(__import__("json").dumps(m))
    assert sorted(evidence_range.Spread.of(tmp_path, "full", [0, 1, 2]).seeds) == [0, 1]
