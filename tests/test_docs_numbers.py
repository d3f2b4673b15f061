"""Numbers quoted in the docs carry their source, `<!-- runs: TABLE VARIANT COLUMN STAT -->` right after them
(STAT: mean, min, max, or seeds for the per-seed values in seed order; a trailing % reads them as percent);
this test recomputes each from the table's committed runs.csv, at the precision the doc quotes (issue 53)."""
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"([-+]?[\d.]+(?:\s*/\s*[-+]?[\d.]+)*)\s*%?<!-- runs: (\S+) (\S+) (\S+) (mean|min|max|seeds)(%?) -->")
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _quoted() -> list[tuple[str, re.Match]]:
    return [(p.name, m) for p in DOCS for m in MARK.finditer(p.read_text())]


def test_the_docs_quote_numbers_with_their_source():
    assert len(_quoted()) >= 6


@pytest.mark.parametrize("doc, mark", _quoted(), ids=lambda x: x if isinstance(x, str) else x.group(0)[:60])
def test_a_quoted_number_is_what_the_runs_give(doc, mark):
    text, table, variant, column, stat, percent = mark.groups()
    runs = pd.read_csv(ROOT / "reports" / table / "runs.csv")
    values = runs[runs["variant"] == variant].sort_values("seed")[column] * (100 if percent else 1)
    quoted = [float(x) for x in text.split("/")]
    expected = list(values) if stat == "seeds" else [getattr(values, stat)()]
    assert len(quoted) == len(expected), (doc, mark.group(0))
    for q, x, raw in zip(quoted, expected, text.split("/")):
        decimals = len(raw.strip().partition(".")[2])
        assert round(x, decimals) == q, f"{doc}: {mark.group(0)} quotes {q}, the runs give {x:.4f}"
