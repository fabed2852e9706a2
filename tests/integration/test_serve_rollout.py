"""A served model updated in place, the way a user does it: `rayfleet serve SPEC` serves a run's
newest checkpoint on 2 replicas, then, under bounded load from 4 clients (rayfleet's client
with its retries), `rayfleet serve SPEC --set spec.source.checkpoint=URI` rolls it to the same
run's earlier epoch, a real second verified checkpoint. Then a checkpoint that verifies but
cannot be loaded (its state.pt holds a pickled object, which `torch.load(weights_only=True)`
refuses in the new replicas) leaves the old model serving, and a corrupt one (a flipped byte)
is refused before Serve is touched. Last, the metrics endpoint (`--metrics-port`) has the
per-model, per-version request and latency series. One `rayfleet serve` process, one module
fixture; this test process never connects to Ray itself.
"""

from __future__ import annotations

import fractions
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.fs as pafs
import pytest
import torch

from rayfleet.errors import RayfleetError
from rayfleet.local import free_port
from rayfleet.storage.checkpoints import download_verified, list_checkpoints, write_manifest
from rayfleet.storage.filesystem import filesystem_for, read_bytes, write_bytes
from rayfleet.storage.uri import parse_uri

from ..conftest import BUCKET, DIGITS_RUN
from .load import BoundedLoad
from .serving import ServeProcess, digits_spec, start_serve

# ~250 s on the 2-core VM (three rollouts under load, each ~60 s of Serve replacing replicas):
# far over the default run's budget. The pure parts run by default (tests/unit/
# test_serve_rollout.py, tests/k8s/test_rollout*.py).
pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUN, MODEL = DIGITS_RUN, "digits"
ONE = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                   "data": [0.25] * 64}]}  # fmt: skip


def version(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


class VersionedLoad(BoundedLoad):
    """BoundedLoad that also keeps every answer's `model_version`, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.versions: list[str] = []

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                answer, outcome = self.client.infer(self.model, self.body), None
            except RayfleetError as exc:
                answer, outcome = None, str(exc)
            with self._lock:
                if outcome is None:
                    self.ok += 1
                    self.versions.append(answer["model_version"])
                else:
                    self.failed += 1
                    self.errors.append(outcome)


class Served(ServeProcess):
    metrics_port: int

    def roll_to(self, checkpoint: str) -> subprocess.CompletedProcess:
        return self.cli(*self._roll_args(checkpoint), timeout=180)

    def _roll_args(self, checkpoint: str) -> list[str]:
        return ["serve", str(self.spec), "--set", "spec.source.run=null",
                "--set", f"spec.source.checkpoint={checkpoint}"]  # fmt: skip

    def roll_under_load(self, checkpoint: str, max_s: float = 60):
        """Start the update, and put the load on once it says it is rolling (its Ray connect
        and checks take seconds on a busy machine) until it has returned: (result, load)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayfleet.cli.main", *self._roll_args(checkpoint)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**self.env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        head = []
        while (
            (line := proc.stdout.readline()) and "rolling" not in line and "deploying" not in line
        ):
            head.append(line)
        head.append(line)
        with VersionedLoad(self.url, MODEL, ONE, retries=5, threads=4, max_s=max_s) as load:
            started = time.monotonic()
            out, err = proc.communicate(timeout=180)
            load.roll_s = time.monotonic() - started
            time.sleep(1.0)
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, "".join(head) + out, err
        ), load

    def status(self) -> dict:
        done = self.cli("serve", "status", "-o", "json")
        assert done.returncode == 0, done.stderr
        return next(a for a in json.loads(done.stdout)["applications"] if a["name"] == MODEL)

    def served_version(self) -> str:
        return httpx.get(f"{self.url}/v2/models/{MODEL}", timeout=10).json()["versions"][0]


@pytest.fixture(scope="module")
def checkpoints(digits_run) -> list[str]:
    """The session's short digits run: its two epochs' verified checkpoints, newest first."""
    result = digits_run.result
    run = parse_uri(f"s3://{BUCKET}/runs/{RUN}")
    found = [f"s3://{path}" for _, path in list_checkpoints(filesystem_for(run), run.fs_path)]
    assert len(found) == 2 and found[0] == result.checkpoint_uri, found
    return found


@pytest.fixture(scope="module")
def served(checkpoints, tmp_path_factory):
    metrics_port = free_port()
    srv = start_serve(
        tmp_path_factory.mktemp("rollout"),
        digits_spec(source={"run": RUN}, storage=f"s3://{BUCKET}", replicas=2,
                    cpusPerReplica=0.5, batching={"maxBatchSize": 1}),
        args=("--metrics-port", str(metrics_port)),
        # Ray binds its metrics exporter to the node's address, and resolves 127.0.0.1 to the
        # machine's; with clusters off (this variable, despite its name) the node address
        # stays loopback, so the test's exporter listens on 127.0.0.1 only.
        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
        kind=Served,
    )  # fmt: skip
    srv.metrics_port = metrics_port
    yield srv
    srv.stop()


def _unloadable_copy(src: str, dst: str, tmp: Path) -> str:
    """`src` with its weights saved next to a pickled object: the manifest is rewritten over
    the new files, so the checkpoint verifies, but `torch.load(weights_only=True)` refuses it."""
    s, d = parse_uri(src), parse_uri(dst)
    manifest = download_verified(filesystem_for(s), s.fs_path, tmp)
    state = torch.load(tmp / "state.pt", weights_only=True)
    torch.save({**state, "note": fractions.Fraction(1, 3)}, tmp / "state.pt")
    write_manifest(tmp, manifest["meta"])
    pafs.copy_files(str(tmp), d.fs_path, destination_filesystem=filesystem_for(d))
    return str(d)


def _corrupt_copy(src: str, dst: str) -> str:
    s, d = parse_uri(src), parse_uri(dst)
    fs = filesystem_for(s)
    pafs.copy_files(s.fs_path, d.fs_path, source_filesystem=fs, destination_filesystem=fs)
    data = bytearray(read_bytes(fs, f"{d.fs_path}/state.pt"))
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    write_bytes(fs, f"{d.fs_path}/state.pt", bytes(data))
    return str(d)


def _series(text: str, name: str, **labels: str) -> list[float]:
    """Values of the Prometheus series `name` whose labels include `labels`."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            out.append(float(line.rsplit(" ", 1)[1]))
    return out


def test_rollout_under_load_failed_updates_keep_the_old_model_and_metrics_per_version(
    served, checkpoints, tmp_path, record_property, capsys
):
    newest, earlier = checkpoints
    v_new, v_old = version(earlier), version(newest)  # rolling back in time, to epoch 1
    assert served.served_version() == v_old
    rolled, load = served.roll_under_load(earlier)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert f"rolled {MODEL} from {v_old} to {v_new}" in rolled.stdout
    assert load.failed == 0, load.errors[:3]
    assert set(load.versions) == {v_old, v_new}, set(load.versions)
    assert load.versions[-20:] == [v_new] * 20  # ends on the new version, for good
    assert served.served_version() == v_new
    status = served.status()
    assert status["checkpoint"] == earlier and status["running"] == 2
    rollout = status["rollout"]
    assert (rollout["from"], rollout["to"], rollout["state"]) == (newest, earlier, "done")
    assert rollout["old"] == {} and rollout["new"] == {"RUNNING": 2}

    # A checkpoint that verifies but does not load: the new replicas fail, the old serve on.
    bad = _unloadable_copy(
        newest, f"s3://{BUCKET}/runs/rollout-bad/checkpoint_e000001-b0", tmp_path
    )
    refused, during = served.roll_under_load(bad)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert f"checkpoint {bad}" in lines[0] and "torch.load(weights_only=True)" in lines[0]
    assert f"{MODEL} still serves {v_new} (update rolled back)" in lines[0]
    assert during.failed == 0 and set(during.versions) == {v_new}, (
        during.errors[:3],
        during.versions[-3:],
    )
    status = served.status()
    assert status["status"] == "RUNNING" and status["checkpoint"] == earlier
    rollout = status["rollout"]
    assert (rollout["to"], rollout["state"], rollout["old"]) == (bad, "rolled back", {"RUNNING": 2})
    assert rollout["new"] == {}

    # A corrupt checkpoint (sha256 mismatch) is refused before Serve is asked.
    corrupt = _corrupt_copy(newest, f"s3://{BUCKET}/runs/rollout-corrupt/checkpoint_e000001-c0")
    refused = served.roll_to(corrupt)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "sha256 does not match manifest" in refused.stderr
    assert served.served_version() == v_new

    _assert_metrics_per_model_and_version(served, checkpoints)

    report = (
        f"rollout under 4 clients: {load.total} requests, {load.failed} failed, "
        f"{load.client.stats.retried} retried, {load.roll_s:.1f}s; refused update: "
        f"{during.total} requests, {during.failed} failed, {during.roll_s:.1f}s"
    )
    record_property("rollout", report)
    with capsys.disabled():
        print(f"\n[serve rollout] {report}")


def _assert_metrics_per_model_and_version(served: Served, checkpoints: list[str]) -> None:
    """Our series (model, model_version, code) and Serve's own, on the metrics export port,
    for both versions that answered (Ray reports them every few seconds)."""
    newest, earlier = checkpoints
    url = f"http://127.0.0.1:{served.metrics_port}/metrics"
    deadline, text = time.monotonic() + 45, ""
    while time.monotonic() < deadline:
        text = httpx.get(url, timeout=10).text
        if all(
            _series(text, "ray_rayfleet_requests_total", model=MODEL, model_version=version(c))
            for c in checkpoints
        ):
            break
        time.sleep(2)
    for checkpoint in (newest, earlier):
        tags = {"model": MODEL, "model_version": version(checkpoint)}
        assert sum(_series(text, "ray_rayfleet_requests_total", code="200", **tags)) > 0, tags
        counts = _series(text, "ray_rayfleet_request_seconds_count", **tags)
        assert sum(counts) > 0, tags
        buckets = _series(text, "ray_rayfleet_request_seconds_bucket", le="+Inf", **tags)
        assert sum(buckets) == sum(counts)
    assert sum(_series(text, "ray_serve_deployment_request_counter_total", application=MODEL))
