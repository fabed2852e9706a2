"""What the operator sends, applied to a real Ray Serve the way KubeRay applies it.

A Ray head (`ray start --head --block`, token auth on, everything on 127.0.0.1) stands in for
the RayService's cluster. The test builds the RayService with the operator's own pure
functions, sends its `serveConfigV2` to Serve's REST API (`PUT /api/serve/applications/`, as
KubeRay does, with the Ray token), then scales the ModelDeployment 1 -> 3 -> 1: each step is
the operator's merge patch applied to the live RayService, and the patched string is PUT
again. A bounded client loop (two threads, no retries) runs throughout; not one request may
fail, and `GET /api/serve/applications/` must show the live replicas following the spec.
"""

from __future__ import annotations

import collections
import copy
import os
import time
from typing import Any

import httpx
import pytest
import yaml

from rayfleet.k8s import reconcile
from rayfleet.local import free_serve_port
from rayfleet.serve.haproxy_local import loopback_env
from rayfleet.serve.ingress import local_env

from ..conftest import REPO
from ..unit.test_serve_loading import write_checkpoint
from .load import BoundedLoad
from .ray_head import RayHead

pytestmark = pytest.mark.integration
APP, MODEL, DEPLOYMENT = "digits", "digits", "ModelServer"
BODY = {
    "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}]
}


@pytest.fixture(scope="module")
def head():
    # Serve's ingress as the rendered RayService sets it on its Ray containers (HAProxy), plus
    # free HAProxy stats/metrics ports so it can share this machine (rayfleet.serve.ingress).
    # HAProxy's stats/metrics listeners on loopback too (rayfleet.serve.haproxy_local).
    env = {**os.environ, **local_env("haproxy", free_port=free_serve_port)}
    head = RayHead({**env, **loopback_env("127.0.0.1")})
    head.serve_port = free_serve_port()
    try:
        head.start()
        yield head
    finally:
        # No graceful Serve shutdown first: its DELETE took the whole 30 s timeout every time
        # (measured), and stop() ends Serve, HAProxy and the rest of the head anyway.
        head.stop()


@pytest.fixture(scope="module")
def model_deployment(tmp_path_factory) -> dict[str, Any]:
    """jobs/digits/serve.yaml as the API server holds it, on a local store with a verified
    digits checkpoint (untrained weights: this test is about replicas, not accuracy)."""
    store = tmp_path_factory.mktemp("store")
    write_checkpoint(store / "runs" / "digits" / "checkpoint_e000001-aa", 1)
    doc = yaml.safe_load((REPO / "jobs" / "digits" / "serve.yaml").read_text())
    doc["spec"].update(storage=str(store), cpusPerReplica=0.5)  # 3 replicas on 2 CPUs
    doc["metadata"].update(namespace="ml", uid="uid-digits", generation=1)
    return doc


def _put(head: RayHead, ray_service: dict[str, Any]) -> None:
    """What KubeRay does with serveConfigV2: YAML -> JSON, PUT. http_options keeps Serve's
    proxy on loopback here (on a cluster KubeRay's default applies)."""
    config = reconcile.serve_config(ray_service)
    config["http_options"] = {"host": "127.0.0.1", "port": head.serve_port}
    r = httpx.put(f"{head.address}/api/serve/applications/", json=config,
                  headers=head.headers, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text[:2000]


def _replicas(head: RayHead) -> tuple[str | None, collections.Counter]:
    r = httpx.get(f"{head.address}/api/serve/applications/", headers=head.headers, timeout=10)
    r.raise_for_status()
    app = (r.json().get("applications") or {}).get(APP) or {}
    dep = (app.get("deployments") or {}).get(DEPLOYMENT) or {}
    return app.get("status"), collections.Counter(x["state"] for x in dep.get("replicas") or [])


def _wait_for(head: RayHead, running: int, timeout_s: float = 120) -> float:
    """Until exactly `running` replicas exist, all RUNNING, and the app is RUNNING."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < timeout_s:
        status, states = _replicas(head)
        last = (status, dict(states))
        assert status != "DEPLOY_FAILED", last
        if status == "RUNNING" and states == collections.Counter({"RUNNING": running}):
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"not {running} RUNNING replicas after {timeout_s}s: {last}")


def test_replicas_follow_the_spec_1_3_1_in_place_with_no_failed_requests(
    head, model_deployment, record_property, capsys
):
    desired = reconcile.desired_ray_service(model_deployment)
    live = copy.deepcopy(desired)
    live["metadata"].update(resourceVersion="1", uid="uid-rayservice", generation=1)
    _put(head, live)
    first = _wait_for(head, 1, timeout_s=180)
    url = f"http://127.0.0.1:{head.serve_port}"
    assert httpx.post(f"{url}/v2/models/{MODEL}/infer", json=BODY, timeout=30).status_code == 200

    observed = [1]
    steps = []
    # No client retries: Serve alone must not drop a request while it scales.
    with BoundedLoad(url, MODEL, BODY, retries=0, max_s=150) as load:
        time.sleep(1.0)
        for replicas in (3, 1):
            md = copy.deepcopy(model_deployment)
            md["spec"]["replicas"] = replicas
            md["metadata"]["generation"] += 1
            (action,) = reconcile.plan(md, [reconcile.desired_ray_service(md)],
                                       {("RayService", "digits"): live})  # fmt: skip
            assert action.verb == "patch" and set(action.body["spec"]) == {"serveConfigV2"}
            live = reconcile.apply_merge_patch(live, action.body)
            _put(head, live)
            steps.append(_wait_for(head, replicas))
            observed.append(_replicas(head)[1]["RUNNING"])
            time.sleep(1.0)
    report = (
        f"first deploy {first:.1f}s; 1->3 in {steps[0]:.1f}s, 3->1 in {steps[1]:.1f}s; "
        f"{load.failed} of {load.ok + load.failed} requests failed under the loop"
    )
    record_property("operator_scaling", report)
    with capsys.disabled():
        print(f"\n[operator scaling] {report}")
    assert observed == [1, 3, 1]
    assert load.failed == 0, load.errors[:3]
    assert load.ok > 50
