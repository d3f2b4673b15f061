"""`run-all` as one function any driver can call: check, plan, lock, prepare, execute with progress,
time and track each run. The CLI parses options and calls run_table; a loop that adds seeds until a
verdict is decided, or a command that replicates chosen cells, calls it the same way."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ablations.console import console, progress_bars
from ablations.tables import Table, Variant


@dataclass
class TableRun:
    """What one run_table call did: the cells it planned (variant name, seed) and how many were lost
    (their workers or jobs died before a record came back; the next call redoes them)."""

    cells: list[tuple[str, int]] = field(default_factory=list)
    lost: int = 0


def run_table(table: Table, runs_dir: Path, cache_dir: Path, reports_dir: Path, data_dir: str | None = None,
              variants: list[Variant] | None = None, seeds: list[int] | None = None, force: bool = False,
              keep_stale: bool = False, any_seed: bool = False, evidence: Path | None = None) -> TableRun:
    """Run the (variant, seed) cells of ``table`` that are not finished and current, here or in the evidence
    (reports_dir/<table>/runs). ``variants`` default to all rows, ``seeds`` to the table's; a row runs only
    its own seeds unless ``any_seed`` (then every seed given, listed in the table or not: a replication).
    Everything is checked (preflight, executor, tracker) before anything is created or trained; a second
    call on the same runs_dir and table is refused while the first holds the lock. ``evidence``: where finished
    runs count as done besides runs_dir (default reports_dir/<table>/runs; a replication keeps its own)."""
    from ablations.run import executors, tracking
    from ablations.run.planning import plan_runs
    from ablations.run.preflight import preflight
    from ablations.run.record import evidence_dir
    from ablations.run.table_files import table_lock

    if table.run.track:
        tracking.check_available()  # MLflow missing: say so before any training (its store is made later)
    for line in preflight(table, runs_dir, cache_dir, data_dir):  # before anything is created or trained
        console.print(f"note: {line}", highlight=False, markup=False)
    executors.check_executor(table)
    with table_lock(runs_dir, table.name):
        todo, notes = plan_runs(table, runs_dir, variants or list(table.variants.values()),
                                table.all_seeds if seeds is None else seeds, force, keep_stale,
                                evidence=evidence or evidence_dir(reports_dir, table.name), any_seed=any_seed)
        for line in notes:
            console.print(line, highlight=False)
        if not todo:
            return TableRun()
        lost = execute(table, todo, runs_dir, cache_dir, data_dir)
    return TableRun([(v.name, s) for v, s in todo], lost)


def execute(table: Table, todo: list[tuple[Variant, int]], runs_dir: Path, cache_dir: Path,
            data_dir: str | None) -> int:
    """Prepare once, run ``todo`` on the table's executor with progress, record the time after every run;
    returns how many runs were lost."""
    from ablations.run import executors, tracking
    from ablations.run.record import child
    from ablations.run.table_files import TableTiming
    from ablations.run.runner import prepare

    timing = TableTiming(runs_dir, table.name)
    workspace = prepare(table, cache_dir, data_dir, log=console.print)
    if table.run.score == "later":  # what `ablate score` needs where the data set is not
        from ablations.run.deferred_scoring import keep_references

        keep_references(child(runs_dir, table.name), {i: workspace.data.captions[i]
                                                      for i in workspace.data.splits[table.data.eval_split]})
    timing.begin(time.time() - timing.start, workspace.seconds)
    console.print(f"{len(todo)} run(s) on {workspace.provenance['device']}, executor {table.run.executor}, "
                  f"{executors.threads_per_run(table)} thread(s) per run", highlight=False)
    with progress_bars() as progress:
        overall = progress.add_task(f"[bold]{table.name}[/bold] runs", total=len(todo))
        tasks = {}

        def done(v, s, state, lines):
            for line in lines:
                progress.console.print(line, highlight=False)
            timing.run_finished()
            if table.run.track and state == "done":  # from the driver, as each record comes back
                try:
                    tracking.track_table(table, child(runs_dir, table.name), table.run.tracking_uri or None,
                                         log=lambda *_: None)
                except Exception as err:  # noqa: BLE001: a tracker's trouble must not stop the table
                    progress.console.print(f"[yellow]MLflow: not logged ({type(err).__name__}: {err}); "
                                           f"`ablate track {table.name} --from {runs_dir}` adds it later[/yellow]")
            if (v.name, s) in tasks:
                progress.update(tasks[(v.name, s)], description=f"  {v.name} seed {s}: {state}")
            else:
                progress.console.print(f"{v.name} seed {s}: {state}", highlight=False)
            progress.advance(overall)

        def on_step(v, s):
            tasks[(v.name, s)] = task = progress.add_task(f"  {v.name} seed {s}", total=None)
            return lambda step, total, loss: progress.update(task, total=total, completed=step,
                                                             description=f"  {v.name} seed {s} loss {loss:.3f}")

        runner = executors.executor(table.run.executor, workspace, runs_dir, cache_dir, data_dir, on_step,
                                    log=progress.console.print)
        lost = runner.run(todo, done)
    console.print(f"[green]finished[/green] {len(todo) - lost} run(s) in {time.time() - timing.start:.0f} s")
    return lost
