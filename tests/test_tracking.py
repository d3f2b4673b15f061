"""MLflow tracking (a view of the runs): one MLflow run per cell, numbers equal to the records, no duplicates on
a rerun; the backfill of committed evidence; the tracking server's REST API lists what was logged."""
import json
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import pytest
from typer.testing import CliRunner

from ablations.cli import app
from ablations.run.record import RunRecord, run_path
from ablations.tables import load_table
from .micro import write_micro


def _runs(uri, table="micro"):
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"ablate/{table}")
    return client, (client.search_runs([experiment.experiment_id]) if experiment else [])


def test_run_all_tracks_every_cell_once_with_the_records_numbers(tmp_path):
    table = write_micro(tmp_path / "micro.toml", seeds=(0, 1), variants=("full", "meanpool"))
    runs, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run-all", str(table), "--runs-dir", str(runs), "--cache-dir", str(tmp_path / "cache"),
            "--track", "mlflow", "--tracking-uri", uri]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    client, logged = _runs(uri)
    assert sorted((r.data.tags["variant"], r.data.tags["seed"]) for r in logged) == [
        ("full", "0"), ("full", "1"), ("meanpool", "0"), ("meanpool", "1")]
    for r in logged:
        record = RunRecord(run_path(runs, "micro", r.data.tags["variant"], int(r.data.tags["seed"])))
        metrics, config = record.metrics(), record.config()
        assert r.data.params["config_hash"] == config["config_hash"]
        finished, seconds = record.finished()  # the UI's Created and Duration are the run's own
        assert r.info.end_time == int(finished * 1000)
        assert r.info.end_time - r.info.start_time == int(seconds * 1000)
        assert r.data.params["train.lr"] == str(config["train"]["lr"])
        for name, value in metrics["metrics"].items():
            assert r.data.metrics[name] == pytest.approx(value), name
        assert r.data.metrics["swap_rate"] == pytest.approx(metrics["probes"]["swap_rate"])
        history = record.history()
        for column in ("train_loss", "dev_loss"):
            logged_curve = client.get_metric_history(r.info.run_id, column)
            assert [m.step for m in logged_curve] == list(history["epoch"])
            assert [m.value for m in logged_curve] == pytest.approx(list(history[column]))
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"captions.json", "per_image.csv"} <= artifacts
    result = CliRunner().invoke(app, args)  # nothing to run, nothing new to log
    assert result.exit_code == 0, result.output
    assert len(_runs(uri)[1]) == 4
    result = CliRunner().invoke(app, ["track", str(table), "--from", str(runs / "micro"), "--tracking-uri", uri])
    assert result.exit_code == 0 and "0 run(s)" in result.output, result.output
    assert len(_runs(uri)[1]) == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backfill_of_the_committed_shapes_evidence_is_served_by_the_tracking_server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["track", "shapes", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    cells = sum(len(v.seeds) for v in load_table("shapes").variants.values())
    assert f"{cells} run(s) of shapes added" in result.output.replace("\n", " ")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", uri, "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        for _ in range(120):  # the server takes a few seconds to start
            try:
                with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=ablate/shapes", timeout=2) as r:
                    experiment = json.load(r)["experiment"]
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow server did not answer within 60 s")
        request = urllib.request.Request(f"{base}/runs/search", method="POST", headers={"Content-Type": "application/json"},
                                         data=json.dumps({"experiment_ids": [experiment["experiment_id"]],
                                                          "max_results": 1000}).encode())
        with urllib.request.urlopen(request, timeout=10) as r:
            found = json.load(r)["runs"]
        assert len(found) == cells
        tags = [{t["key"]: t["value"] for t in run["data"]["tags"]} for run in found]
        assert {t["variant"] for t in tags} == set(load_table("shapes").variants)
        assert all(any(m["key"] == "CIDEr" for m in run["data"]["metrics"]) for run in found)
    finally:
        server.terminate()
        server.wait(timeout=30)
