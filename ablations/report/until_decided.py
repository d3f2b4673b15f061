"""The report of a table whose seeds were added until decided (`ablate run-all TABLE --until-decided`).

The driver stores its plan with the evidence (table_files.SequentialPlan: reports/<table>/runs/sequential.json).
With a plan there, the report reads every seed the evidence holds (the table file lists only the first ones), replays
the looks (decide.sequential.next_look) and takes each expectation's verdict from the look that decided it, at
that look's level: testing all the seeds at 0.05 at the end would decide a true null more often than 5 %. Without
a plan nothing here changes the report.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vlm_core.errors import UserError

from ablations.decide.sequential import LookResult, Plan, markdown, next_look
from ablations.decide.verdicts import Verdict
from ablations.report.analysis import Analysis, analyse
from ablations.report.collect import collect
from ablations.report.formatting import md_table
from ablations.run.record import RunRecord
from ablations.run.table_files import SequentialPlan
from ablations.tables import Table


def read_plan(evidence: Path) -> Plan | None:
    """The plan stored in a table's evidence, checked (one line naming the file), or None."""
    stored = SequentialPlan(evidence).read()
    if stored is None:
        return None
    plan = Plan(tuple(stored["looks"]), stored["max_seeds"], float(stored["shape"]), float(stored["alpha"]))
    try:
        plan.schedule()
    except UserError as err:
        raise UserError(f"{SequentialPlan(evidence).path}: {err}") from None
    return plan


def plan_record(plan: Plan) -> dict:
    return {"looks": list(plan.looks), "max_seeds": plan.max_seeds, "shape": plan.shape, "alpha": plan.alpha}


def seeds_present(*folders: Path) -> dict[str, list[int]]:
    """Per variant, the seeds with a finished or failed record in any of the table folders."""
    out: dict[str, set[int]] = {}
    for folder in folders:
        for cell in sorted(Path(folder).glob("*/seed-*")) if folder is not None and Path(folder).is_dir() else []:
            number = cell.name.removeprefix("seed-")
            if number.isdigit() and RunRecord(cell).state() in ("done", "failed"):
                out.setdefault(cell.parent.name, set()).add(int(number))
    return {v: sorted(s) for v, s in out.items()}


def with_present_seeds(table: Table, *folders: Path) -> Table:
    """The table with each variant's seeds extended by those present in the folders (settings, hence each cell's
    hash, unchanged): what collect and add_runs need to see the seeds the sequential rule added."""
    found = seeds_present(*folders)
    return replace(table, variants={n: replace(v, seeds=sorted(set(v.seeds) | set(found.get(n, ()))))
                                    for n, v in table.variants.items()})


def seeds_text(seeds: dict[str, int]) -> str:
    """'5 seeds per arm', or each arm's count where they differ (the looks table and the progress line)."""
    counts = set(seeds.values())
    return f"{counts.pop()} seeds per arm" if len(counts) == 1 else ", ".join(f"{a} {n}" for a, n in seeds.items())


def sequential_verdicts(result: LookResult, final: list[Verdict]) -> list[Verdict]:
    """The report's expectation verdicts replaced by the sequential ones: a decided expectation's from the look
    that decided it (its tests' numbers and decisions at that look), an open one's from the last look reached.
    Verdicts without tests (n/a) stay as they are."""
    out = []
    for v in final:
        key = f"{v.variant}: {v.expectation}"
        at = result.decided.get(key, result.look_index)
        look = result.looks[at] if 0 <= at < len(result.looks) else None
        q = next((q for q in getattr(look, "questions", []) if q.key == key and q.verdict is not None), None) \
            if look else None
        if q is None:
            out.append(v if v.verdict == "n/a" or look is not None else replace(
                v, verdict="inconclusive", numbers=f"{v.numbers} (sequential: {result.reason})"))
            continue
        word = look.words[key][0]
        state = "decided" if key in result.decided else "open"
        note = (f" (sequential: {state} at look {at + 1} of {len(result.schedule)}, {seeds_text(look.seeds)}, "
                f"level {look.level:.4g})")
        out.append(replace(q.verdict, verdict=word, numbers="; ".join(t.text() for t in q.tests) + note))
    return out


def analyse_evidence(table: Table, evidence: Path) -> tuple[Table, Analysis, LookResult | None]:
    """collect + analyse, the way every reader of a table's evidence must: with a stored plan, on every seed
    present and with the sequential verdicts (then the table returned lists those seeds)."""
    plan = read_plan(evidence)
    if plan is None:
        return table, analyse(collect(table, evidence)), None
    table = with_present_seeds(table, evidence)
    a = analyse(collect(table, evidence))
    result = next_look(a.runs, plan)
    a.expectations = sequential_verdicts(result, a.expectations)
    return table, a, result


def section_lines(table: Table, result: LookResult | None, plan_path: str = "runs/sequential.json") -> list[str]:
    """The report section: how the verdicts were reached, which look decided each, then every look."""
    if result is None:
        return []
    rows = []
    for key, word in result.verdicts.items():
        at = result.decided.get(key)
        rows.append([key, f"**{word}**" if at is not None and word != "inconclusive" else word,
                     f"look {at + 1}" if at is not None else "not decided",
                     seeds_text(result.looks[at].seeds) if at is not None else "–"])
    lines = ["## Seeds added until decided", "",
             f"`ablate run-all {table.name} --until-decided` added seeds where a verdict was open, following the plan "
             f"stored with the evidence (`{plan_path}`). The verdicts of \"Expected vs observed\" (and verdicts.csv / "
             "verdicts.json) are the sequential ones: each from the look that decided it, at that look's level (an "
             "open one from the last look); testing all the seeds at 0.05 at the end would decide a true null more "
             "often than 5 % (docs/how-reports-decide.md).", ""]
    if rows:
        lines += [md_table(["expectation", "verdict", "decided at", "seeds there"], rows), ""]
    lines += [markdown(result), ""]
    if not result.done:
        lines += [f"`ablate run-all {table.name} --until-decided` continues from this evidence.", ""]
    return lines
