"""The `ablate` command line: run-all, report, list, train, caption, data check.

Only light modules are imported here: `ablate --help` and `ablate <command> --help` start without torch,
transformers or pandas; each command imports what it needs (tests/test_exports_cli.py keeps it so).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import track
from rich.table import Table as RichTable

from vlm_core.errors import BackboneUnavailable, UserError

from ablations.console import console, err_console, progress_bars, quiet_libraries

# Option defaults, spelled here so that building the commands imports nothing heavy; the same values as
# record.RUNS_DIR / CACHE_DIR / REPORTS_DIR and vlm_core.device.AUTO_DEVICE (a test checks that they agree).
RUNS_DIR, CACHE_DIR, REPORTS_DIR = Path("runs"), Path(".cache"), Path("reports")
AUTO_DEVICE = "auto"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Ablation-study harness for a minimal BLIP-2-style image captioner.")
data_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Data set tools.")
app.add_typer(data_app, name="data")
evidence_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                           help="A table's evidence: the run records its report is written from.")
app.add_typer(evidence_app, name="evidence")


@app.callback()
def _main() -> None:
    quiet_libraries()


RUNS = typer.Option(RUNS_DIR, "--runs-dir", help="Where run folders go (runs/<table>/<variant>/seed-<k>).")
REPORTS = typer.Option(REPORTS_DIR, "--reports-dir", help="Reports and their evidence "
                       "(reports/<table>/runs/: finished runs without weights, from any machine).")
TRACK = typer.Option(None, "--track", help="'mlflow': log each finished run to MLflow (pip install -e '.[mlflow]'); "
                     "default: the table's run.track.")
TRACKING_URI = typer.Option(None, "--tracking-uri", help="Any MLflow tracking URI (default: sqlite:///runs/mlflow.db).")
CACHE = typer.Option(CACHE_DIR, "--cache-dir", envvar="ABLATE_CACHE",
                     help="Feature and LM caches (Flickr8k EfficientNet features: ~0.95 GiB on disk).")
DATA_DIR = typer.Option(None, "--data-dir", help="Flickr8k folder (else $ABLATE_FLICKR8K, else the table's data.path).")
DEVICE = typer.Option(None, "--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps "
                      "(default: the table's run.device, auto).")
PRECISION = typer.Option(None, "--precision", help="fp32 | bf16 | fp16 autocast (default: the table's, fp32).")


def _run_options(tbl, **options) -> None:
    """`run-all` / `train` options over the table's [run] section, checked like table keys."""
    from ablations.tables import apply_settings

    given = [f"run.{k}={v!r}" if isinstance(v, str) else f"run.{k}={v}" for k, v in options.items() if v is not None]
    apply_settings(tbl, None, given)


def _fail(err: Exception, hint: str = "") -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(str(err))}{escape(hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command("run-all")
def run_all(
    table: str = typer.Argument("shapes", help="A shipped table name (see `ablate list`) or a .toml path."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only this variant (repeatable)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Use only the table's first N seeds."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="Run only this seed of the table (repeatable), "
                                             "e.g. to split a table over machines."),
    force: bool = typer.Option(False, "--force", help="Redo finished (and failed) runs."),
    keep_stale: bool = typer.Option(False, "--keep-stale", help="Keep finished runs whose settings differ from the "
                                    "table's now (default: redo them); the report flags them."),
    device: Optional[str] = DEVICE, precision: Optional[str] = PRECISION,
    executor: Optional[str] = typer.Option(None, "--executor", help="How the runs execute: serial, local (a process "
                                           "pool), or another of executors.EXECUTORS; an unknown name lists them "
                                           "(default: the table's run.executor)."),
    executor_option: Optional[list[str]] = typer.Option(None, "--executor-option", help="KEY=VALUE: an option of the "
                                                        "executor ([run.options.<executor>]; repeatable)."),
    cpus_per_run: Optional[int] = typer.Option(None, "--cpus-per-run", help="Threads per run (0: all cores serial, "
                                               "1 otherwise)."),
    gpus_per_run: Optional[float] = typer.Option(None, "--gpus-per-run", help="GPUs per run on a cluster executor."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="An existing Ray cluster (default: start "
                                              "a local one; run.options.ray.address)."),
    track: Optional[str] = TRACK, tracking_uri: Optional[str] = TRACKING_URI,
    until_decided: bool = typer.Option(False, "--until-decided", help="Then add seeds where an expectation is still "
                                       "open, look by look (3, 5, 8, 12 seeds per arm), until every one is decided or "
                                       "the looks are spent, and write the report (docs/how-reports-decide.md)."),
    max_seeds: Optional[int] = typer.Option(None, "--max-seeds", help="With --until-decided: the last look's seeds "
                                            "per arm, at most the planned 12 (default 12; a table's stored plan "
                                            "keeps its own)."),
    score: Optional[str] = typer.Option(None, "--score", help="now | later | auto: score the metrics that need "
                                        "Java in each run, or leave them 'to score' for `ablate score` where Java "
                                        "is; auto = later when Java is missing (default: the table's run.score, auto)."),
    runs_dir: Path = RUNS, reports_dir: Path = REPORTS, cache_dir: Path = CACHE, data_dir: Optional[str] = DATA_DIR,
):
    """Train every variant x seed of TABLE, then caption, score and probe each run.

    Finished runs are skipped when their stored settings match the table, here or in the evidence
    (reports/<table>/runs, e.g. committed from another machine); a stale run is redone, and a run
    killed half-way is redone from scratch (a redo replaces the old run only once it finishes). A
    second run-all on the same --runs-dir and table is refused while the first holds the lock.
    With --until-decided, seeds are then added where a verdict is open (a sequential rule whose plan is stored
    with the evidence, so a killed run-all, rerun, continues and the report shows each look).
    """
    from ablations.run import executors
    from ablations.run.run_all import run_table
    from ablations.tables import load_table

    tbl = None
    try:
        tbl = load_table(table)
        _run_options(tbl, device=device, precision=precision, executor=executor, cpus_per_run=cpus_per_run,
                     gpus_per_run=gpus_per_run, track=track, tracking_uri=tracking_uri, score=score)
        if ray_address is not None:
            tbl.run.options = {**tbl.run.options, "ray": {**tbl.run.options.get("ray", {}), "address": ray_address}}
        executors.set_executor_options(tbl, executor_option or [])
        if until_decided or max_seeds is not None:
            _until_decided(tbl, until_decided, max_seeds, only or seeds or seed or force, runs_dir, cache_dir,
                           reports_dir, data_dir, keep_stale)
            return
        done = run_table(tbl, runs_dir, cache_dir, reports_dir, data_dir, variants=tbl.select(only),
                         seeds=_chosen_seeds(tbl, seeds, seed), force=force, keep_stale=keep_stale)
        if not done.cells:
            console.print(f"[green]nothing to do[/green]: every selected run of '{tbl.name}' is finished "
                          f"and current; `ablate report {table}` writes the report")
            return
        console.print(f"next: `ablate report {table}`", highlight=False)
        if done.lost:
            raise UserError(f"{done.lost} run(s) could not be finished (their workers or jobs died first); "
                            "`ablate run-all` again redoes them")
    except BackboneUnavailable as err:
        _fail(err, f" (table '{tbl.name}' requires: {tbl.requires})" if tbl and tbl.requires else "")
    except UserError as err:
        _fail(err)


def _until_decided(tbl, until: bool, max_seeds: Optional[int], chosen, runs_dir: Path, cache_dir: Path,
                   reports_dir: Path, data_dir: Optional[str], keep_stale: bool) -> None:
    from ablations.run.until_decided import until_decided

    if not until:
        raise UserError("--max-seeds caps the seeds --until-decided adds: give --until-decided too")
    if chosen:
        raise UserError("--until-decided runs the table's own cells, then the seeds the sequential rule asks for: "
                        "--only, --seeds, --seed and --force do not combine with it")
    out = until_decided(tbl, runs_dir, cache_dir, reports_dir, data_dir, max_seeds, keep_stale)
    console.print(f"{'nothing to do' if not out.made else f'{out.made} run(s) made'}; "
                  f"{out.result.reason}; report: {out.report}", highlight=False, markup=False)


@app.command()
def replicate(
    table: str = typer.Argument(..., help="A shipped table name or a .toml path."),
    seeds: str = typer.Option(..., "--seeds", help="The replication's seeds: a range (5-9) or a list (5,6,7); new "
                              "seeds, or the table's own on another machine."),
    name: Optional[str] = typer.Option(None, "--name", help="The replication's name (default: seeds-5-9)."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Replicate only this variant (repeatable)."),
    runs_dir: Path = RUNS, reports_dir: Path = REPORTS, cache_dir: Path = CACHE, data_dir: Optional[str] = DATA_DIR,
):
    """Run the table's variants again on other seeds (or the same seeds on another machine) into separate evidence
    (reports/<table>/replications/<name>/runs), then rewrite the table's report with a section that puts the
    replication's verdicts beside its own ("k of n verdicts replicate"). The table's verdicts never use them.
    Budget rows ([[sweep]]) are not replicated."""
    from ablations.report.evidence import add_runs
    from ablations.report.replication import REPLICATIONS, parse_seeds, with_seeds
    from ablations.report.write import write_report
    from ablations.run.record import child
    from ablations.run.run_all import run_table
    from ablations.tables import load_table

    try:
        tbl = load_table(table)
        chosen = parse_seeds(seeds)
        name = name or f"seeds-{seeds.replace(',', '-')}"
        copy = with_seeds(tbl, chosen)
        rows = [v for v in copy.select(only) if not v.sweep_of]
        root = child(child(child(reports_dir, tbl.name), REPLICATIONS), name)
        local = child(child(runs_dir, REPLICATIONS), name)
        done = run_table(copy, local, cache_dir, reports_dir, data_dir, variants=rows, seeds=chosen,
                         evidence=root / "runs")
        merge = add_runs(copy, child(local, tbl.name), root / "runs", data_dir=data_dir)
        path = write_report(tbl, None, reports_dir, data_dir)
        console.print(f"replication '{name}': {len(done.cells)} run(s) made, {len(merge.added)} added to "
                      f"{root / 'runs'}; report: {path}", highlight=False)
        if done.lost:
            raise UserError(f"{done.lost} run(s) could not be finished; `ablate replicate` again redoes them")
    except UserError as err:
        _fail(err)


def _chosen_seeds(tbl, first: Optional[int], chosen: Optional[list[int]]) -> list[int]:
    if first and chosen:
        raise UserError("--seeds N and --seed K: give one of them")
    if chosen:
        unknown = [k for k in chosen if k not in tbl.all_seeds]
        if unknown:
            raise UserError(f"--seed {unknown[0]}: not a seed of table '{tbl.name}' (its seeds: "
                            f"{', '.join(map(str, tbl.all_seeds))}; add it to table.seeds to run it)")
        return [k for k in tbl.all_seeds if k in chosen]
    return tbl.all_seeds[:first] if first else tbl.all_seeds


@app.command()
def report(
    table: str = typer.Argument("shapes", help="A shipped table name or a .toml path."),
    runs_dir: Path = RUNS,
    out_dir: Path = typer.Option(REPORTS_DIR, "--out", help="Reports go to <out>/<table>/README.md, their "
                                 "evidence to <out>/<table>/runs/."),
    data_dir: Optional[str] = DATA_DIR,
    thumbnails: Optional[bool] = typer.Option(
        None, "--thumbnails/--no-thumbnails",
        help="Gallery thumbnails and attention maps. Default: the table's table.show_images (true only for the generated shapes, never Flickr8k photos)."),
):
    """Add the finished runs in --runs-dir to the table's evidence (<out>/<table>/runs/), then write
    <out>/<table>/README.md, plots, runs.csv and verdicts.csv / verdicts.json (every verdict with its
    numbers) from the evidence alone: no retraining, no weights."""
    import shutil

    from ablations.report.replication import REPLICATIONS
    from ablations.report.write import write_report
    from ablations.run.record import evidence_dir
    from ablations.tables import load_table

    try:
        tbl = load_table(table)
        committed, evidence = evidence_dir(REPORTS_DIR, tbl.name), evidence_dir(out_dir, tbl.name)
        if not evidence.exists() and committed.is_dir() and committed.resolve() != evidence.resolve():
            from vlm_core.atomic import atomic_dir  # whole or not at all: a partial copy would never be redone

            atomic_dir(evidence, lambda tmp: shutil.copytree(committed, tmp, symlinks=True, dirs_exist_ok=True))
            console.print(f"evidence: {committed} copied to {evidence}", highlight=False, markup=False)
            replications = committed.parent / REPLICATIONS  # their evidence too: the report compares with them
            if replications.is_dir() and not (evidence.parent / REPLICATIONS).exists():
                atomic_dir(evidence.parent / REPLICATIONS,
                           lambda tmp: shutil.copytree(replications, tmp, symlinks=True, dirs_exist_ok=True))
        path = write_report(tbl, runs_dir, out_dir, data_dir=data_dir, thumbnails=thumbnails,
                            log=lambda m: console.print(m, highlight=False, markup=False))
    except UserError as err:
        _fail(err)
    console.print(f"wrote {path}")


@app.command("score")
def score_command(
    table: str = typer.Argument(..., help="A shipped table name or a .toml path."),
    runs_dir: Path = RUNS, reports_dir: Path = REPORTS, data_dir: Optional[str] = DATA_DIR,
):
    """Score the runs of TABLE left 'to score' (made with --score later, or where Java was missing): the metrics
    that need Java, from their stored captions and references, in --runs-dir and in the evidence. Needs Java."""
    from ablations.run.deferred_scoring import score_table
    from ablations.run.record import child, evidence_dir
    from ablations.tables import load_table

    try:
        tbl = load_table(table)
        local = child(runs_dir, tbl.name)
        n = score_table(tbl, [local, evidence_dir(reports_dir, tbl.name)], data_dir, lock=(local,),
                        log=lambda m: console.print(m, highlight=False, markup=False))
    except UserError as err:
        _fail(err)
    console.print(f"{n} run(s) of '{tbl.name}' scored" if n else f"nothing to score: no run of '{tbl.name}' waits "
                  "for its metrics", highlight=False)


@evidence_app.command("add")
def evidence_add(
    table: str = typer.Argument(..., help="A shipped table name or a .toml path."),
    sources: Optional[list[Path]] = typer.Option(None, "--from", help="A runs folder, a reports folder or a table "
                                                 "folder from this or another machine (repeatable; default --runs-dir)."),
    runs_dir: Path = RUNS, reports_dir: Path = REPORTS,
    replace: bool = typer.Option(False, "--replace", help="Where a cell has two different results with the same "
                                 "settings, take the incoming one (default: refuse and list both)."),
    data_dir: Optional[str] = DATA_DIR,
):
    """Add finished runs (without weights) to reports/<table>/runs/, the evidence the report is written
    from and `run-all` resumes from. Records are checked: format file names only, regular files of bounded
    size, each JSON of its expected shape, a stored hash equal to the hash of the stored settings, and the
    metrics scored again from the stored captions where the data set is readable."""
    from ablations.report.evidence import add_runs, table_folder
    from ablations.run.record import evidence_dir
    from ablations.tables import load_table

    try:
        tbl = load_table(table)
        for source in sources or [runs_dir]:
            folder = table_folder(source, tbl.name)
            if not folder.is_dir():
                raise UserError(f"{source}: no runs of table '{tbl.name}' there")
            merge = add_runs(tbl, folder, evidence_dir(reports_dir, tbl.name), replace, data_dir)
            console.print(f"{folder}: added {len(merge.added)}, already there {len(merge.same)}, "
                          f"kept {len(merge.kept)}", highlight=False, markup=False)
            for line in merge.kept + merge.notes:
                console.print(f"  {line}", highlight=False, markup=False)
    except UserError as err:
        _fail(err)


@app.command()
def readme(
    path: Path = typer.Option(Path("README.md"), "--readme", help="The README whose findings block is rewritten."),
    reports_dir: Path = REPORTS,
):
    """Rewrite the README's findings block (each ablation's verdict per headline table) from the committed
    evidence, and write its cells with their numbers to <reports-dir>/findings.csv; a test fails when the
    committed block is stale."""
    from ablations.report.findings import write_readme_block

    try:
        changed = write_readme_block(path, reports_dir)
    except UserError as err:
        _fail(err)
    console.print(f"{path}: findings block {'rewritten' if changed else 'already current'}; its cells in "
                  f"{reports_dir / 'findings.csv'}", highlight=False)


@app.command()
def verify(
    table: str = typer.Argument(..., help="A shipped table name or a .toml path."),
    cells: int = typer.Option(2, "--cells", help="How many cells to retrain (one per variant, first seed first)."),
    cell: Optional[list[str]] = typer.Option(None, "--cell", help="Retrain this cell instead, VARIANT:SEED "
                                             "(repeatable), e.g. one run of each code version in the evidence."),
    reports_dir: Path = REPORTS, cache_dir: Path = CACHE, data_dir: Optional[str] = DATA_DIR,
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Change a setting for the rerun only (to see "
                                             "what a difference looks like), e.g. --set train.lr=3e-3."),
):
    """Retrain chosen cells of TABLE with the code as it is now and compare them with the evidence:
    'exact', or the largest difference in the variant's seed SDs with what differed (threads, CPU,
    libraries, code). Checks are stored with the evidence and listed in the report."""
    from ablations.run.verify import verify_cells

    try:
        verify_cells(table, cells, reports_dir, cache_dir, data_dir, set_ or [], log=console.print, named=cell)
    except UserError as err:
        _fail(err)


@app.command("track")
def track_command(
    table: str = typer.Argument(..., help="A shipped table name or a .toml path."),
    source: Optional[Path] = typer.Option(None, "--from", help="A table folder of runs (default: the table's "
                                          "committed evidence, reports/<table>/runs)."),
    tracking_uri: Optional[str] = TRACKING_URI, reports_dir: Path = REPORTS,
):
    """Log a table's finished runs to MLflow (backfill: browse the shipped tables without retraining); each
    record once, so running it again adds only new runs."""
    from ablations.run import tracking
    from ablations.report.evidence import table_folder
    from ablations.run.record import evidence_dir
    from ablations.tables import load_table

    try:
        tbl = load_table(table)
        folder = table_folder(source, tbl.name) if source else evidence_dir(reports_dir, tbl.name)
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder of runs of '{tbl.name}'")
        tracking.track_table(tbl, folder, tracking_uri, log=console.print)
    except UserError as err:
        _fail(err)


@app.command("list")
def list_tables(runs_dir: Path = RUNS, reports_dir: Path = REPORTS):
    """Show the shipped tables, their variants and which runs exist, locally or in the committed evidence
    (`done` = in the evidence or finished here; `local` marks a run that is only in the runs folder)."""
    from ablations.run.planning import expected_hash
    from ablations.run.record import RunRecord, cell_path, evidence_dir, run_path
    from ablations.tables import load_table, shipped_tables

    def state(tbl, v, s) -> str:
        want = expected_hash(tbl, v, s)
        local = RunRecord(run_path(runs_dir, tbl.name, v.name, s)).status(want)
        committed = RunRecord(cell_path(evidence_dir(reports_dir, tbl.name), v.name, s)).status(want)
        if committed in ("done", "failed"):
            return committed
        if local in ("done", "failed"):
            return f"{local} (local)"
        return local if local != "missing" else committed

    for name in shipped_tables():
        try:
            tbl = load_table(name)
        except UserError as err:
            console.print(f"[red]{name}: {err}[/red]")
            continue
        t = RichTable(title=f"{tbl.name}: {tbl.description}", title_justify="left")
        t.add_column("variant")
        t.add_column("expected")
        for s in tbl.all_seeds:
            t.add_column(f"seed {s}")
        colour = {"done": "green", "failed": "red", "partial": "yellow", "missing": "dim", "stale": "magenta", "-": "dim"}
        counts: dict[str, int] = {}
        for v in tbl.variants.values():
            states = [state(tbl, v, s) if s in v.seeds else "-" for s in tbl.all_seeds]
            for x in states:
                counts[x] = counts.get(x, 0) + (x != "-")
            t.add_row(v.name, v.expected, *[f"[{colour[x.split()[0]]}]{x}[/{colour[x.split()[0]]}]" for x in states])
        console.print(t)
        console.print(", ".join(f"{n} {x}" for x, n in counts.items() if n) + f" of {sum(counts.values())} runs",
                      highlight=False)


DEFAULT_TABLE = {"shapes": "shapes", "flickr8k": "flickr8k"}  # `ablate train --data NAME` takes its settings here


@app.command()
def train(
    data: str = typer.Option("shapes", "--data", help="shapes | flickr8k (picks the shapes or flickr8k table)."),
    device: Optional[str] = DEVICE, precision: Optional[str] = PRECISION,
    variant: str = typer.Option("full", "--variant"),
    table: Optional[str] = typer.Option(None, "--table", help="Take settings from this table instead."),
    seed: int = typer.Option(0, "--seed"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the table's train.epochs."),
    dev_images: Optional[int] = typer.Option(None, "--dev-images", help="Caption only the first N dev images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/train/<table>-<variant>-seed<k>)."),
    settings: Optional[list[str]] = typer.Option(None, "--set", help="Override a table key for this run, e.g. "
                                                  "--set train.connector_lr=6e-4 (repeatable; TOML values)."),
    cache_dir: Path = CACHE, data_dir: Optional[str] = DATA_DIR,
):
    """Train one configuration, print train/dev loss per epoch, save trainable weights and dev captions."""
    from ablations.run.preflight import when_to_score
    from ablations.run.record import RunRecord
    from ablations.run.runner import execute_run, prepare
    from ablations.tables import apply_settings, check_seed, load_table

    try:
        if data not in DEFAULT_TABLE:
            raise UserError(f"--data must be one of {', '.join(DEFAULT_TABLE)}, not {data!r}")
        tbl = load_table(table or DEFAULT_TABLE[data])
        (v,) = tbl.select([variant])
        own = ([f"train.epochs={epochs}"] if epochs is not None else []) + (
            [f"data.eval_images={dev_images}"] if dev_images is not None else [])
        apply_settings(tbl, v, (settings or []) + own)  # the options checked like table keys (ranges included)
        check_seed(seed, "--seed")
        _run_options(tbl, device=device, precision=precision)
        tbl.data.eval_split = "dev"
        out = out or RUNS_DIR / "train" / f"{tbl.name}-{variant}-seed{seed}"
        RunRecord(out).check_target()  # before loading anything: a folder of other files is never touched
        later = when_to_score(tbl)  # no Java here: the dev metrics that need it wait, the run still trains
        if later:
            console.print(f"no usable Java here: the dev captions are made and probed, BLEU/METEOR/ROUGE-L/CIDEr "
                          f"are not scored ({out / 'captions.json'} holds the captions)")
        start = time.time()
        workspace = prepare(tbl, cache_dir, data_dir, splits=("train", "dev"), log=console.print)
        with progress_bars() as progress:
            task = progress.add_task(f"training {variant}", total=None)
            state = execute_run(workspace, v, seed, out, eval_split="dev", log=progress.console.print,
                                on_step=lambda s, n, loss: progress.update(task, total=n, completed=s))
        metrics = RunRecord(out).metrics() if state == "done" else {}
        if metrics:
            m, p = metrics["metrics"], metrics["probes"]
            scored = f"BLEU-4 {m['BLEU-4']:.3f}  CIDEr {m['CIDEr']:.3f}" if "CIDEr" in m else "not scored (no Java)"
            console.print(f"dev ({metrics['images']} images): {scored}  empty {p['empty_rate']:.0%}  "
                          f"unique {p['unique_share']:.0%}")
        console.print(f"{state} in {time.time() - start:.0f} s -> {out} (dev captions: {out / 'captions.json'})")
        if state != "done":
            raise typer.Exit(1)
    except UserError as err:
        _fail(err)


def _read_image(path: Path):
    from vlm_core.data import open_image

    return open_image(path)


@app.command()
def caption(
    images: list[Path] = typer.Argument(..., help="Image files to caption."),
    run: Path = typer.Option(..., "--run", help="A finished run folder."),
    beams: Optional[int] = typer.Option(None, "--beams", help="Default: the run's own decoding settings."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default: the run's."),
    no_repeat_ngram_size: Optional[int] = typer.Option(None, "--no-repeat-ngram-size", help="Default: the run's."),
    device: str = typer.Option(AUTO_DEVICE, "--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps."),
    cache_dir: Path = CACHE, data_dir: Optional[str] = DATA_DIR,
):
    """Caption any image file with a trained run, decoding as the run was scored (overridable)."""
    import dataclasses

    from vlm_core.decoding import decode
    from vlm_core.train import TrainConfig

    from ablations.tables import check_range
    from ablations.run.trained import load_run_model, run_decoding

    try:
        overrides = {"max_new_tokens": max_new_tokens, "num_beams": beams, "no_repeat_ngram_size": no_repeat_ngram_size}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        for key, value in overrides.items():  # the bounds a table's [train] has, before anything loads
            check_range(TrainConfig, key, value, "--" + {"num_beams": "beams"}.get(key, key).replace("_", "-"))
        model, vision = load_run_model(run, cache_dir, device, data_dir)
        pics = [_read_image(p) for p in images]
        decoding = dataclasses.replace(run_decoding(run), **overrides)
        texts, _ = decode(model, vision.encode_images(pics), decoding)
        for p, t in zip(images, texts):
            typer.echo(f"{p}\t{t}")
    except UserError as err:
        _fail(err)


@app.command("attention")
def attention_maps(
    images: list[Path] = typer.Argument(..., help="Image files."),
    run: Path = typer.Option(..., "--run", help="A finished run folder of a Q-Former variant."),
    out: Path = typer.Option(Path("attention"), "--out", help="Folder for the PNGs."),
    per_query: bool = typer.Option(True, "--per-query/--grid-only", help="Also one PNG per query and layer."),
    device: str = typer.Option(AUTO_DEVICE, "--device", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps."),
    cache_dir: Path = CACHE, data_dir: Optional[str] = DATA_DIR,
):
    """Where each query of the run's Q-Former looks: per image, each query's cross-attention map (per
    layer, mean over heads, upsampled and overlaid on the image) and one grid of all queries."""
    from ablations.measure.attention import maps_for_images, render_maps
    from ablations.run.trained import load_run_model

    try:
        model, vision = load_run_model(run, cache_dir, device, data_dir)
        written = []
        for p in images:
            pic = _read_image(p).resize((vision.image_size, vision.image_size))
            maps = maps_for_images(model, vision.encode_images([pic]), str(run))[:, 0]
            written += render_maps(pic, maps, vision.grid, out, Path(p).stem, per_query)
        console.print(f"wrote {len(written)} PNG(s) to {out}/ ({maps.shape[0]} layer(s) x {maps.shape[1]} queries "
                      "per image; `*_grid.png` shows all queries)", highlight=False)
    except UserError as err:
        _fail(err)


@data_app.command("check")
def data_check(path: Path = typer.Argument(..., help="A data file (Karpathy or COCO JSON, JSONL, CSV), a Flickr8k "
                                           "or imagefolder folder, or 'shapes'."),
               fmt: str = typer.Option("auto", "--format", help="auto (from the file) | karpathy | coco | jsonl | csv "
                                       "| flickr8k."),
               image_root: Optional[Path] = typer.Option(None, "--image-root", help="Where the images are (default: "
                                                         "the data file's folder; Flickr8k: its Images/)."),
               split_file: Optional[list[str]] = typer.Option(None, "--split-file", help="SPLIT=FILE: the image ids of "
                                                              "one split, one a line (all of train, dev, test)."),
               images: bool = typer.Option(True, "--images/--no-images", help="Also open every image.")):
    """Validate a data set and print a summary: images, captions per image, splits, caption lengths, problems
    (a missing or unreadable image named with the file and line or JSON path that lists it)."""
    import numpy as np

    from vlm_core.caption_files import AUTO, Source, default_label, detect_format, read_captions
    from vlm_core.shapes import load_shapes

    try:
        if str(path) == "shapes":
            data, described = load_shapes(), "shapes (generated)"
        else:
            pairs = [s.partition("=") for s in split_file or []]
            if any(not sep or not f for _, sep, f in pairs):
                raise UserError("--split-file: expected SPLIT=FILE, e.g. train=Flickr_8k.trainImages.txt")
            src = Source(path, images=image_root, split_files={s: Path(f) for s, _, f in pairs})
            fmt = detect_format(src) if fmt == AUTO else fmt
            data = read_captions(src, fmt)
            described = f"{default_label(path)} ({fmt}: {src.path}; images in {data.images_dir})"
        problems, unreadable = list(data.problems), 0
        if images and data.images_dir is not None:
            all_ids = [i for s in data.splits.values() for i in s]
            for image_id in track(all_ids, description="opening images", console=err_console, transient=True):
                try:
                    data.load_image(image_id)
                except UserError as err:
                    problems.append(f"{data.where[image_id]}: {err}" if image_id in data.where else str(err))
                    unreadable += 1
        per = [len(v) for v in data.captions.values()]
        words = np.array([len(c.split()) for v in data.captions.values() for c in v])
        q = np.percentile(words, [0, 10, 50, 90, 100], method="nearest")
        console.print(f"data set: {described}", highlight=False, soft_wrap=True)
        console.print(f"images with captions: {len(data.captions)}; captions: {sum(per)}; captions per image: "
                      f"min {min(per)}, median {int(np.median(per))}, max {max(per)}", highlight=False, soft_wrap=True)
        console.print("splits: " + ", ".join(f"{s} {len(ids)}" for s, ids in data.splits.items()) + " images",
                      highlight=False, soft_wrap=True)
        console.print(f"caption length in words: min {q[0]}, 10% {q[1]}, median {q[2]}, 90% {q[3]}, max {q[4]}",
                      highlight=False, soft_wrap=True)
        console.print(f"content hash (splits and references): {data.content_hash()}", highlight=False, soft_wrap=True)
        console.print(f"problems: {len(problems)}", soft_wrap=True)
        for p in problems[:20]:
            console.print(f"  - {p}", highlight=False, markup=False, soft_wrap=True)
        if len(problems) > 20:
            console.print(f"  ... and {len(problems) - 20} more", highlight=False, soft_wrap=True)
        if unreadable or any("cannot read" in p or "missing" in p for p in problems):
            console.print(f"{unreadable} image(s) could not be used (listed above)", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
    except UserError as err:
        _fail(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
