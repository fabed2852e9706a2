"""Serve autoscaling on the default HAProxy ingress, as a user sets it: `rayfleet serve` of a
spec with `autoscaling: {minReplicas: 1, maxReplicas: 2, targetOngoingRequests: 1}` starts one
replica; 4 clients sending back to back keep more than one request in flight, and Serve adds
the second replica (after its 30 s upscale delay) with no request failing on the way.
`rayfleet serve status -o json` is what the test reads, as a user would. Scaling back down
waits Serve's 600 s downscale delay, so it is not waited for here.
"""

from __future__ import annotations

import json
import time

import pytest

from ..conftest import BUCKET
from ..unit.test_serve_loading import write_checkpoint
from .load import BoundedLoad
from .serving import digits_spec, start_serve

# ~90 s: Serve waits 30 s of sustained load before it scales up.
pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "digits"
ONE = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                   "data": [0.25] * 64}]}  # fmt: skip


def _status(srv) -> dict:
    done = srv.cli("serve", "status", "-o", "json")
    assert done.returncode == 0, done.stderr
    return next(a for a in json.loads(done.stdout)["applications"] if a["name"] == MODEL)


def test_autoscaling_adds_a_replica_under_load_without_failed_requests(tmp_path, s3):
    checkpoint = write_checkpoint(tmp_path / "checkpoint_e000002-aa", 2)
    srv = start_serve(
        tmp_path,
        digits_spec(source={"checkpoint": str(checkpoint)}, storage=f"s3://{BUCKET}",
                    replicas=None, cpusPerReplica=0.5, batching={"maxBatchSize": 1},
                    autoscaling={"minReplicas": 1, "maxReplicas": 2,
                                 "targetOngoingRequests": 1}),
    )  # fmt: skip
    try:
        first = _status(srv)
        assert first["running"] == 1 and "autoscaling" in first["target"], first
        seen = [first["running"]]
        with BoundedLoad(srv.url, MODEL, ONE, retries=0, threads=4, max_s=150) as load:
            deadline = time.monotonic() + 120
            while seen[-1] < 2 and time.monotonic() < deadline:
                time.sleep(3)
                seen.append(_status(srv)["running"])
            time.sleep(2)  # requests on both replicas before the load stops
        assert seen[-1] == 2, f"never scaled up: running replicas seen {seen}"
        assert load.failed == 0, load.errors[:3]
        assert load.ok > 100
        print(f"\n[autoscale] 1 -> 2 replicas after {len(seen) * 3} s of load; {load.ok} ok")
    finally:
        srv.stop()
