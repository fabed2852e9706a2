"""MLflow tracking against a real `mlflow server` (sqlite, loopback), read back through
MLflow's own client: a TrainJob's params, per-epoch metric history, checkpoint URIs and final
record; a sweep's parent run with one child per trial; and a server that is down costing
the driver nothing but one warning.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from rayfleet import tracking
from rayfleet.local import free_port
from rayfleet.specs import load_spec
from rayfleet.train.launcher import run_train_job

from ..conftest import BUCKET, REPO

pytestmark = pytest.mark.integration
LOOP = REPO / "jobs" / "ray-loop"
EPOCHS = 2


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port with a sqlite store; stopped by its PID."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(root / "server.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


def _runs(client, experiment: str, **filters):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    return client.search_runs([exp.experiment_id], filter_string=where)


def _plot(args: list[str], out):
    from typer.testing import CliRunner

    from rayfleet.cli.main import app

    done = CliRunner().invoke(
        app, ["plot", *args, "--out", str(out), "--storage", f"s3://{BUCKET}"]
    )
    assert done.exit_code == 0, done.output
    return out


def test_train_job_logs_params_epochs_checkpoints_and_record(
    ray_local, s3, mlflow_server, client, tmp_path
):
    job = load_spec(
        LOOP / "train.yaml",
        [
            "metadata.name=tracked-loop",
            f"spec.storage=s3://{BUCKET}",
            f"spec.model.config.epochs={EPOCHS}",
            "spec.scaling.numWorkers=1",
            f"spec.tracking.mlflow.uri={mlflow_server}",
            "spec.tracking.mlflow.experiment=tests-train",
        ],
    )
    result = run_train_job(job, sys_path=[str(LOOP)])

    (run,) = _runs(client, "tests-train", **{"rayfleet.name": "tracked-loop"})
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.entrypoint"] == "digits_loop:train_loop"
    assert params["model.config.lr"] == "0.01"
    assert params["scaling.numWorkers"] == "1"
    assert not any(k.startswith("tracking") for k in params)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(EPOCHS))
    assert history[-1].value == pytest.approx(result.metrics["val_accuracy"])
    assert client.get_metric_history(run.info.run_id, "train_loss")
    tags = run.data.tags
    assert tags["rayfleet.checkpoint_uri"] == result.checkpoint_uri
    assert tags["rayfleet.status"] == "SUCCEEDED"
    assert tags["rayfleet.spec_hash"] == job.spec_hash()

    local = client.download_artifacts(run.info.run_id, "record.json", str(tmp_path))
    doc = json.loads(open(local).read())
    assert doc["status"] == "SUCCEEDED" and len(doc["epochs"]) == EPOCHS
    assert doc["result"]["checkpointUri"] == result.checkpoint_uri
    local = client.download_artifacts(run.info.run_id, "checkpoints.json", str(tmp_path))
    uris = [c["uri"] for c in json.loads(open(local).read())["checkpoints"]]
    assert result.checkpoint_uri in uris and len(uris) == EPOCHS

    # An evaluation of the run attaches to it (found by the run's URI).
    spec = job.spec.tracking
    evaluation = {"accuracy": 0.97, "examples": 360}
    assert tracking.attach(str(job.run_uri()), evaluation, "evaluation.json", spec=spec)
    local = client.download_artifacts(run.info.run_id, "evaluation.json", str(tmp_path))
    assert json.loads(open(local).read()) == evaluation

    png = _plot(["--run", "tracked-loop"], tmp_path / "run.png")  # from storage alone
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow  # a sweep in its own process: ~1 min idle, several on a busy machine
def test_sweep_is_a_parent_run_with_a_child_per_trial(s3, mlflow_server, client, tmp_path):
    env = {
        **os.environ,
        "RAYFLEET_STORAGE": f"s3://{BUCKET}",
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_EXPERIMENT_NAME": "tests-sweep",
    }
    done = subprocess.run(
        [sys.executable, "-m", "rayfleet.cli.main", "sweep", str(LOOP / "sweep.yaml")]
        + ["--set", "metadata.name=tracked-sweep"],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        start_new_session=True,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    (parent,) = _runs(client, "tests-sweep", **{"rayfleet.kind": "SweepJob"})
    assert parent.info.status == "FINISHED"
    assert parent.data.params["metric"] == "val_accuracy"
    assert parent.data.params["searchSpace.model.config.lr.choice"] == "[0.001, 0.01]"
    assert parent.data.tags["rayfleet.best_trial"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "trials.json",
        "best.json",
    }

    children = _runs(client, "tests-sweep", **{"mlflow.parentRunId": parent.info.run_id})
    assert len(children) == 2
    assert sorted(c.data.params["model.config.lr"] for c in children) == ["0.001", "0.01"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["rayfleet.state"] == "DONE"
        assert child.data.tags["rayfleet.checkpoint_uri"].startswith(f"s3://{BUCKET}/sweeps/")
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(EPOCHS))
    best = parent.data.tags["rayfleet.best_trial"]
    assert best in {c.data.tags["rayfleet.trial_id"] for c in children}

    # The driver kept each trial's run record; `rayfleet plot --sweep` draws from them.
    png = _plot(["--sweep", "tracked-sweep"], tmp_path / "sweep.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def test_a_server_that_is_down_costs_one_warning_and_no_wait(caplog):
    """A closed port: every call fails at once, is retried, then tracking turns itself off
    with one warning; nothing the driver calls blocks, and closing is bounded."""
    target = tracking.Target(uri=f"http://127.0.0.1:{free_port()}", experiment="nowhere")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rayfleet.tracking"):
        tracker = tracking.Tracker(target, within_s=3)
        tracker.start_run("run", name="r", params={"a": "1"})
        for epoch in range(200):
            tracker.log_metrics("run", {"loss": 1.0 / (epoch + 1)}, epoch)
        enqueued = time.monotonic() - started
        tracker.end_run("run")
        tracker.close(timeout_s=90)  # importing mlflow alone takes 3-20 s here
    assert enqueued < 0.5, enqueued
    assert tracker.down is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "off for the rest of this run" in warnings[0].getMessage()
    assert time.monotonic() - started < 90
