"""`ablate run-all TABLE --until-decided [--max-seeds N]`: seeds added where a verdict is open, look by look
(decide/sequential.py), until every expectation is decided or the planned looks are spent; then the report.

Only the plan is stored (table_files.SequentialPlan, in the evidence, so the report replays the same looks
anywhere). Each pass adds this runs folder's finished runs to the evidence, replays the looks from the seeds present
and runs the seeds the next look asks for, so a driver killed at any point continues, when rerun, where the evidence
stands.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlm_core.errors import UserError

from ablations.console import console
from ablations.decide.sequential import LOOKS, LookResult, Plan, next_look, next_seeds
from ablations.report.collect import TableRuns, collect
from ablations.report.evidence import add_runs
from ablations.report.until_decided import plan_record, read_plan, seeds_text, with_present_seeds
from ablations.run.record import child, evidence_dir
from ablations.run.table_files import SequentialPlan
from ablations.run.run_all import run_table
from ablations.tables import Table


@dataclass
class Outcome:
    """Where the procedure stopped, how many runs this call made, and the report it wrote."""

    result: LookResult
    made: int
    report: Path


def settle_plan(evidence: Path, max_seeds: int | None) -> Plan:
    """The plan stored with the evidence, or a new one (default looks, capped by ``max_seeds``). A stored plan is
    never changed half-way: its levels hold only for the looks planned before the first seed was seen."""
    stored = read_plan(evidence)
    if stored is None:
        plan = Plan(max_seeds=LOOKS[-1] if max_seeds is None else max_seeds)
        plan.schedule()  # a bad --max-seeds is refused before anything runs
        return plan
    if max_seeds is not None and max_seeds != stored.max_seeds:
        raise UserError(f"{SequentialPlan(evidence).path}: seeds are being added under --max-seeds {stored.max_seeds} "
                        f"(looks {', '.join(map(str, stored.schedule()))}); another plan half-way would break its "
                        "error rate: rerun without --max-seeds, or remove the file and the seeds it added to start over")
    return stored


def _span(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)) else \
        ", ".join(map(str, seeds))


def _groups(wanted: dict[str, list[int]]) -> dict[tuple[int, ...], list[str]]:
    """Arms that get the same new seeds, together (one run_table call each; the most useful arm first)."""
    out: dict[tuple[int, ...], list[str]] = {}
    for arm, seeds in wanted.items():
        out.setdefault(tuple(seeds), []).append(arm)
    return out


def progress_line(result: LookResult, wanted: dict[str, list[int]]) -> str:
    """'look 2 of 3: 5 seeds per arm; decided: ...; adding seeds 5-7 to meanpool, full'."""
    adding = "; ".join(f"adding seeds {_span(list(s))} to {', '.join(arms)}" for s, arms in _groups(wanted).items())
    if result.look_index < 0:
        return f"{result.reason}: {adding}"
    look = result.looks[-1]
    seeds = seeds_text(look.seeds)
    decided = ", ".join(f"{k} {result.verdicts[k]} (look {at + 1})" for k, at in result.decided.items()) or "none"
    return (f"look {look.index + 1} of {len(result.schedule)}: {seeds}; decided: {decided}; "
            + (f"stopped: {result.reason}" if result.done else adding))


def _unfinished(runs: TableRuns, asked: dict[str, list[int]]) -> list[str]:
    done = set(zip(runs.runs["variant"], runs.runs["seed"])) if not runs.runs.empty else set()
    failed = {(f["variant"], f["seed"]): f["reason"] for f in runs.failed}
    return [f"{a} seed {s}: " + (f"failed ({failed[(a, s)]})" if (a, s) in failed else "no finished run")
            for a, seeds in asked.items() for s in seeds if (a, s) not in done]


def until_decided(table: Table, runs_dir: Path, cache_dir: Path, reports_dir: Path, data_dir: str | None = None,
                  max_seeds: int | None = None, keep_stale: bool = False, log=None) -> Outcome:
    """Run the table's own cells (as run-all), then loop: add the finished runs here to the evidence, replay the
    looks on every seed present, stop when done, else run the seeds the next look asks for (only the arms of open
    tests, new seed numbers); then write the report."""
    from ablations.report.write import write_report

    log = log or (lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
    if table.run.score == "later":  # each look decides on CIDEr and the swap probes: unscored runs would be NaN
        raise UserError("--until-decided decides each look on scored runs: not with run.score = 'later' (run it "
                        "where Java is)")
    table.run.score = "now"  # 'auto' without Java is then refused before anything trains, not left 'to score'
    evidence = evidence_dir(reports_dir, table.name)
    plan = settle_plan(evidence, max_seeds)
    made = 0

    def run(**cells) -> None:
        nonlocal made
        done = run_table(table, runs_dir, cache_dir, reports_dir, data_dir, keep_stale=keep_stale, **cells)
        made += len(done.cells)
        if done.lost:
            raise UserError(f"{done.lost} run(s) could not be finished (their workers or jobs died first); "
                            f"`ablate run-all {table.name} --until-decided` again redoes them and continues")

    run()  # the table's own cells first: the looks start from them
    if read_plan(evidence) is None:
        SequentialPlan(evidence).write(plan_record(plan))
    local, asked = child(runs_dir, table.name), {}
    while True:
        if local.is_dir():
            add_runs(with_present_seeds(table, evidence, local), local, evidence, data_dir=data_dir)
        runs = collect(with_present_seeds(table, evidence), evidence)
        unfinished = _unfinished(runs, asked)
        if unfinished:  # a failed run would be asked for again and again
            raise UserError(f"the seeds the sequential rule asked for did not all finish ({'; '.join(unfinished)}); "
                            "fix the cause and rerun (a failed seed is then replaced by the next number)")
        result = next_look(runs, plan)
        asked = {} if result.done else {a: next_seeds(runs, a, n) for a, n in result.seeds_to_add.items()}
        log(progress_line(result, asked))
        if result.done:
            break
        for seeds, arms in _groups(asked).items():
            run(variants=[table.variants[a] for a in arms], seeds=list(seeds), any_seed=True)
    return Outcome(result, made, write_report(table, runs_dir, reports_dir, data_dir))
