"""MLflow as a view of a table's runs, for researchers who browse their experiments there (optional:
``pip install -e ".[mlflow]"``). `ablate report` stays the source of verdicts.

One MLflow experiment per table (``ablate/<table>``), one MLflow run per finished (variant, seed) record:
params = the resolved settings flattened (``train.lr``, ...) with the config hash and code fingerprint;
metrics = train / dev loss, reward and self-critical loss per history row (``step`` = the row's place: the epoch,
unless the table measures dev loss inside epochs), then every corpus
metric and scalar probe; tags = table, variant, seed, the record's result digest; artifacts = captions and
per-image values. Runs are logged from the process that holds the records (the driver, whatever the
executor): a record is logged once, identified by its cell and result digest, so a resumed table or a
repeated backfill adds only what is new.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from vlm_core.errors import UserError

from ablations.run.planning import expected_hash
from ablations.run.identity import settings_of
from ablations.run.record import RUNS_DIR, RunRecord, cell_path
from ablations.tables import Table

DEFAULT_URI = f"sqlite:///{RUNS_DIR / 'mlflow.db'}"  # a file beside the runs; any MLflow tracking URI works
HISTORY_METRICS = ("train_loss", "dev_loss", "reward", "scst_loss")


def check_available() -> None:
    """MLflow installed? Asked before any training, and before anything is created on disk."""
    try:
        import mlflow.tracking  # noqa: F401
    except ImportError as err:
        raise UserError("MLflow tracking needs MLflow: pip install -e '.[mlflow]'") from err


def client(uri: str | None):
    check_available()
    from mlflow.tracking import MlflowClient
    uri = uri or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: ``{"train": {"lr": 0.002}}`` -> ``{"train.lr": "0.002"}``."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return out


def _experiment(mlflow_client, table: Table) -> str:
    name = f"ablate/{table.name}"
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifacts = _artifact_root(mlflow_client.tracking_uri)
    return mlflow_client.create_experiment(name, artifact_location=artifacts,
                                           tags={"table": table.name, "description": table.description[:5000]})


def _artifact_root(uri: str) -> str | None:
    """Beside a sqlite store (else MLflow writes ./mlruns wherever it runs); a server's own default otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def _logged(mlflow_client, experiment: str) -> set[tuple[str, str]]:
    """(cell, result digest) of every run already in the experiment."""
    out, token = set(), None
    while True:
        page = mlflow_client.search_runs([experiment], max_results=1000, page_token=token)
        out |= {(r.data.tags.get("ablate.cell"), r.data.tags.get("ablate.result")) for r in page}
        token = page.token
        if not token:
            return out


def track_table(table: Table, folder: Path, uri: str | None = None, log=print) -> int:
    """Log every finished run of ``table`` in ``folder`` (runs/<table>, or the evidence) not logged yet;
    returns how many were added."""
    mlflow_client = client(uri)
    experiment = _experiment(mlflow_client, table)
    logged, added = _logged(mlflow_client, experiment), 0
    for v in table.variants.values():
        for seed in v.seeds:
            record = RunRecord(cell_path(folder, v.name, seed))
            if (record.state() != "done" or not record.is_current(expected_hash(table, v, seed))
                    or "to_score" in record.metrics()):
                continue  # unfinished, stale (made with other settings than the table's now), or not scored yet
            key = (f"{v.name}/seed-{seed}", record.result_digest())
            if key not in logged:
                log_run(mlflow_client, experiment, table, v.name, seed, record)
                logged.add(key)
                added += 1
    log(f"MLflow: {added} run(s) of {table.name} added to experiment ablate/{table.name} ({mlflow_client.tracking_uri})")
    return added


def log_run(mlflow_client, experiment: str, table: Table, variant: str, seed: int, record: RunRecord) -> str:
    from mlflow.entities import Metric, Param

    config, metrics = record.config(), record.metrics()
    fingerprint = config.get("provenance", {}).get("code", {}).get("fingerprint", "not recorded")
    tags = {"table": table.name, "variant": variant, "seed": str(seed), "ablate.cell": f"{variant}/seed-{seed}",
            "ablate.result": record.result_digest(), "mlflow.runName": f"{variant} seed {seed}"}
    finished = record.finished()  # the run's own times, so the UI's Created and Duration are the training's
    end_ms = int((finished[0] if finished else time.time()) * 1000)
    start_ms = end_ms - int((finished[1] if finished else 0) * 1000)
    run = mlflow_client.create_run(experiment, start_time=start_ms, tags=tags)
    run_id = run.info.run_id
    params = flat_params(settings_of(config))
    params.update({"config_hash": str(config.get("config_hash")), "code_fingerprint": fingerprint})
    items = [Param(k[:250], v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
        mlflow_client.log_batch(run_id, params=items[i : i + 100])
    now, points = end_ms, []
    # step = the history row's place: the epoch, where a table has no dev checks inside epochs (MLflow steps are whole)
    for step, row in enumerate(record.history().to_dict("records"), 1):
        points += [Metric(k, float(row[k]), now, step) for k in HISTORY_METRICS
                   if k in row and row[k] is not None and math.isfinite(float(row[k]))]
    final = {**metrics["metrics"], **metrics.get("slots", {}),
             **{f"xe {k}": v for k, v in metrics.get("metrics_xe", {}).items()},
             **{k: v for k, v in metrics["probes"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    points += [Metric(k, float(v), now, 0) for k, v in final.items() if math.isfinite(float(v))]
    for i in range(0, len(points), 1000):
        mlflow_client.log_batch(run_id, metrics=points[i : i + 1000])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "captions.json").write_text(json.dumps(record.captions(), indent=0))
        record.per_image().to_csv(Path(tmp) / "per_image.csv")
        mlflow_client.log_artifacts(run_id, tmp)
    mlflow_client.set_terminated(run_id, "FINISHED", end_time=end_ms)
    return run_id
