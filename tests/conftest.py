"""Shared fixtures: a loopback S3 server and one embedded Ray per test session.

The S3 variables are exported before Ray starts so every Ray worker inherits them, exactly
as pods inherit them from the chart on a cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_uri(s3):
    from rayfleet.data.digits import import_digits
    from rayfleet.storage.uri import parse_uri

    uri = parse_uri(f"s3://{BUCKET}/datasets/digits")
    import_digits(uri)
    return uri


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("RAYFLEET_STORAGE", raising=False)
    return os.environ
