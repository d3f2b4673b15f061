"""Replication as a result: the table's verdicts again from other seeds (or the same seeds on another machine),
kept as separate evidence and compared verdict by verdict with the table's own evidence.

A replication lives in ``reports/<table>/replications/<name>/runs/`` (run records, as the table's evidence),
made by ``ablate replicate``. It never enters the table's own verdicts: the report only puts the two side by
side, so a reader sees which verdicts a fresh set of seeds gives again, and how far each Δ moved."""
from dataclasses import replace
from pathlib import Path

from ablations.report.formatting import fmt, md_table
from ablations.tables import Table

REPLICATIONS = "replications"


def with_seeds(table: Table, seeds: list[int]) -> Table:
    """The table with every variant run on ``seeds`` (its settings, hence its cells' hashes, unchanged)."""
    return replace(table, seeds=list(seeds), variants={n: replace(v, seeds=list(seeds)) for n, v in table.variants.items()})


def parse_seeds(text: str) -> list[int]:
    """'5-9' or '5,6,7' (or one seed) -> the seeds, each once, in order; anything else is one clear line."""
    from ablations.tables import check_seed
    from vlm_core.errors import UserError
    try:
        if "-" in text.strip("-") and "," not in text:
            first, last = (int(x) for x in text.split("-"))
            for end in (first, last):  # before the list is made: 0-4000000000 is one line, not a long wait
                check_seed(end, "--seeds")
            if last - first >= 1000:
                raise UserError(f"--seeds {text!r}: at most 1000 seeds at once")
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds {text!r}: give a range (5-9) or a list (5,6,7) of whole numbers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: give at least one seed, each once")
    for s in seeds:
        check_seed(s, "--seeds")
    return seeds


def replication_evidence(out_dir: Path) -> list[Path]:
    """The replications' evidence folders of a report folder (reports/<table>/), by name."""
    root = Path(out_dir) / REPLICATIONS
    return sorted(p / "runs" for p in root.iterdir() if (p / "runs").is_dir()) if root.is_dir() else []


def seeds_in(evidence: Path) -> list[int]:
    """The seeds that have a cell folder in an evidence folder (<variant>/seed-<k>/)."""
    return sorted({int(p.name.removeprefix("seed-")) for p in Path(evidence).glob("*/seed-*")
                   if p.is_dir() and p.name.removeprefix("seed-").isdigit()})


DECIDED = ("held", "not held", "equivalent", "differs")


def compare(original: list[dict], again: list[dict]) -> list[dict]:
    """One row per verdict of the original (expectations, grounding, reliance; budgets need sweeps a replication
    does not make): its verdict beside the replication's, and each of its tests' estimate and CI beside the
    replication's. ``same`` is None where the replication has no such verdict (a variant it did not run)."""
    def keyed(records: list[dict]) -> dict[tuple, dict]:
        """A verdict is its section, variant and expectation (the k-th such, where one expectation gives several
        verdicts): not its list of tests, which changes with the seeds (a floor compares with every variant that
        did not collapse), so a verdict whose tests changed is still compared, never dropped as 'not run'."""
        seen, out = {}, {}
        for r in records:
            if r["section"] == "budgets":
                continue
            triple = (r["section"], r["variant"], r["expectation"])
            seen[triple] = seen.get(triple, -1) + 1
            out[triple + (seen[triple],)] = r
        return out

    mine, theirs = keyed(original), keyed(again)
    rows = []
    for key, r in mine.items():
        other = theirs.get(key)
        again_tests = {t["test"]: t for t in (other or {}).get("tests", [])}
        tests = [{"test": t["test"], "estimate": t.get("estimate"), "ci": (t.get("ci_low"), t.get("ci_high")),
                  "seeds": t.get("seeds_variant"), "again": again_tests.get(t["test"], {})} for t in r.get("tests", [])]
        rows.append({"section": r["section"], "variant": r["variant"], "expectation": r["expectation"],
                     "verdict": r["verdict"], "replication": other["verdict"] if other else None,
                     "same": (other["verdict"] == r["verdict"]) if other else None, "tests": tests})
    return rows


def _ci(test: dict) -> str:
    if test.get("estimate") is None:
        return "–"
    low, high = test.get("ci") or (test.get("ci_low"), test.get("ci_high"))
    return fmt(test["estimate"]) + (f" [{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else "")


def section_lines(name: str, seeds: list[int], rows: list[dict], machines: str) -> list[str]:
    """A report section: how many verdicts replicate, then every verdict's tests with both estimates."""
    compared = [r for r in rows if r["same"] is not None]
    decided = [r for r in compared if r["verdict"] in DECIDED]
    lines = [f"### Replication `{name}`: seeds {', '.join(map(str, seeds))}", "",
             f"**{sum(r['same'] for r in compared)} of {len(compared)} verdicts replicate** (the same verdict from "
             f"these seeds alone; {sum(r['same'] for r in decided)} of the {len(decided)} held / not held ones). "
             f"Runs made on: {machines}. Each test's estimate with its seed-level CI, from the table's seeds and "
             "from the replication's.", ""]
    table = []
    for r in rows:
        for k, t in enumerate(r["tests"] or [{}]):
            first = k == 0
            table.append([r["variant"] if first else "", t.get("test", r["expectation"]), r["verdict"] if first else "",
                          (r["replication"] or "not run") if first else "",
                          ("yes" if r["same"] else "no" if r["same"] is not None else "–") if first else "",
                          _ci(t), _ci({**t.get("again", {}), "ci": None}) if t.get("again") else "–"])
    lines += [md_table(["variant", "test", "verdict", "replication's verdict", "same", "table's seeds",
                        "replication's seeds"], table), ""]
    return lines
