"""The README's findings block is what `ablate readme` writes from the committed evidence: never stale."""
from pathlib import Path

from ablations.report.findings import END, START, findings

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_findings_block_is_current():
    text = (ROOT / "README.md").read_text()
    assert START in text and END in text
    committed = text[text.index(START): text.index(END) + len(END)]
    assert committed == findings(ROOT / "reports"), "README findings are stale: run `ablate readme`"


def test_the_findings_block_names_every_headline_table():
    block = findings(ROOT / "reports")
    for table in ("shapes", "flickr8k-tiny", "flickr8k", "flickr8k-smollm2"):
        assert f"`{table}`" in block
