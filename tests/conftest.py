"""Shared fixtures: a loopback S3 server and one embedded Ray per test session.

The S3 variables are exported before Ray starts so every Ray worker inherits them, exactly
as pods inherit them from the chart on a cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
BUCKET = "rayfleet-test"
# Tests kill drivers on purpose; the next driver of the run waits for the dead one's lease to
# expire (30 s by default). Every process the tests start inherits this shorter lease.
os.environ.setdefault("RAYFLEET_LEASE_TTL_S", "8")


@pytest.fixture(scope="session")
def s3():
    from rayfleet.storage.s3server import loopback_s3

    with loopback_s3(bucket=BUCKET) as server:
        yield server


@pytest.fixture(scope="session")
def ray_local(s3):
    import ray

    from rayfleet.embedded import EMBEDDED_RAY_CONFIG

    ray.init(
        address="local",  # never a `ray start` head another test runs
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config=EMBEDDED_RAY_CONFIG,
    )
    yield
    _shutdown_ray_and_its_processes(ray)


def _shutdown_ray_and_its_processes(ray) -> None:
    """ray.shutdown(), then end whatever of this session's Ray outlived it. A Train
    controller actor was once left running, re-parented to init, after the raylet that
    started it was gone; these are processes this test session started (its descendants
    when Ray went down), ended by PID."""
    import sys

    import psutil

    ours = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, alive = psutil.wait_procs(ours, timeout=15)
    for proc in alive:
        try:
            print(
                f"ending pid {proc.pid} ({proc.name()}), left by the session's Ray", file=sys.stderr
            )
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="session")
def digits_uri(s3):
    from rayfleet.data.digits import import_digits
    from rayfleet.storage.uri import parse_uri

    uri = parse_uri(f"s3://{BUCKET}/datasets/digits")
    import_digits(uri)
    return uri


DIGITS_RUN = "digits-2ep"
DIGITS_EXPERIMENT = "tests-digits"
MLFLOW_FILE_STORE = {"MLFLOW_ALLOW_FILE_STORE": "true"}
"""MLflow's file store: a real tracking backend with no server to start (MLflow 3 keeps it
behind this switch)."""


@dataclass(frozen=True)
class TrainedRun:
    result: object  # rayfleet.train.launcher.RunResult
    tracking_uri: str


@pytest.fixture(scope="session")
def digits_run(ray_local, digits_uri, tmp_path_factory) -> TrainedRun:
    """One short digits run (1 worker, 2 epochs: two verified checkpoints under
    s3://BUCKET/runs/DIGITS_RUN, tracked to an MLflow file store) for every test that needs a
    trained model and leaves the run as it is: serving, gRPC, evaluation, compression and
    rollouts. A Ray Train run costs ~45 s on the 2-core VM; once a session, not once a module.
    """
    from rayfleet.specs import load_spec
    from rayfleet.train.launcher import run_train_job

    tracking = f"file://{tmp_path_factory.mktemp('mlruns')}"
    with mock.patch.dict(os.environ, MLFLOW_FILE_STORE):
        job = load_spec(
            REPO / "jobs" / "digits" / "train.yaml",
            [f"metadata.name={DIGITS_RUN}", f"spec.storage=s3://{BUCKET}",
             "spec.run.epochs=2", "spec.scaling.numWorkers=1",
             f"spec.tracking.mlflow.uri={tracking}",
             f"spec.tracking.mlflow.experiment={DIGITS_EXPERIMENT}"],
        )  # fmt: skip
        return TrainedRun(run_train_job(job), tracking)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("RAYFLEET_STORAGE", raising=False)
    return os.environ
