"""The README's summary sentences say what their verdicts say, no more (issue 53)."""
import copy
from pathlib import Path

from ablations.report.findings import findings_data
from ablations.report.summary import PHRASE, claim_of, readme_summary

import pytest

REPORTS = Path(__file__).resolve().parents[1] / "reports"


@pytest.fixture(scope="module")
def committed():
    return findings_data(REPORTS)


def test_every_summary_sentence_agrees_with_the_verdicts_it_cites(committed):
    data = committed
    sentences = readme_summary(data, data.targets)
    assert 3 <= len(sentences) <= 6
    cited = [s for s in sentences if s.cites]
    assert cited, "no sentence cites a verdict"
    for sentence in cited:
        for phrase in claim_of(sentence, data):
            assert phrase in sentence.text, (phrase, sentence.text)


def test_a_changed_verdict_changes_its_sentence(committed):
    data = committed
    before = readme_summary(data, data.targets)
    variant, claim, table = next(c for s in before for c in s.cites)
    changed = copy.deepcopy(data)
    for v, c, cells in changed.rows:
        if (v, c) == (variant, claim):
            old = cells[table]["verdict"]
            cells[table]["verdict"] = "inconclusive" if old != "inconclusive" else "held"
            new = cells[table]["verdict"]
    after = readme_summary(changed, changed.targets)
    text = next(s.text for s in after if (variant, claim, table) in s.cites)
    assert f"`{table}` {PHRASE[new]}" in text and f"`{table}` {PHRASE[old]} " not in text


def test_the_target_sentence_names_the_published_systems_it_beats_and_misses(committed):
    data = committed
    text = readme_summary(data, data.targets)[0].text
    rows = {t["key"]: t for t in data.targets["flickr8k"]}
    assert f"{rows['CIDEr']['got']:.3f}" in text and rows["CIDEr"]["decision"] in text
    assert "Lu et al. 2017" in text and "Vinyals et al. 2015" in text
