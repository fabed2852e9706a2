"""Serving end to end, the way a user does it: a short digits run trained into the loopback S3,
a sweep's best.json naming its checkpoint, then `rayfleet serve SPEC` in the foreground (its
own embedded Ray and Serve on a free port on 127.0.0.1) and every other command against it:
`rayfleet predict`, `serve status`, `serve SPEC --replicas N`, a killed replica, a corrupt
checkpoint, turning the bearer-token check on in place, Ctrl-C. Nothing is mocked; this test
process never connects to Ray itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow.fs as pafs
import pytest
import torch
import yaml

from rayfleet.serve.evaluate import evaluate_served, read_split
from rayfleet.storage.checkpoints import download_verified
from rayfleet.storage.filesystem import filesystem_for, read_bytes, write_bytes
from rayfleet.storage.pins import pinned
from rayfleet.storage.uri import parse_uri
from rayfleet.train.recipes.digits import build_model

from ..conftest import BUCKET
from ..unit.test_serve_protocol import BAD
from .load import BoundedLoad
from .serving import ServeProcess, digits_spec, start_serve

pytestmark = pytest.mark.integration

SWEEP, MODEL = "serve-sweep", "digits"
TENSOR = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.25] * 64}
ONE = {"inputs": [TENSOR]}
INFER = f"/v2/models/{MODEL}/infer"
TOKEN = "it-0123456789abcdef-serve-token"  # handed to `rayfleet serve` in a --token-file


@pytest.fixture(scope="module")
def trained(digits_run):
    """The session's short digits run (tests/conftest.py): 1 worker, 2 epochs in S3."""
    return digits_run.result


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    # A sweep's result, as sweeps write it, naming the trained checkpoint.
    best = parse_uri(f"s3://{BUCKET}/sweeps/{SWEEP}/best.json")
    doc = {"sweep": SWEEP, "metric": "val_accuracy", "mode": "max",
           "value": trained.metrics["val_accuracy"], "trial_id": "t0", "params": {},
           "epoch": trained.epoch, "checkpoint": trained.checkpoint_uri}  # fmt: skip
    write_bytes(filesystem_for(best), best.fs_path, json.dumps(doc).encode())

    # Auth starts off; the token goes to the embedded Ray's environment so that a later
    # in-place update can turn spec.auth on (test_auth_turned_on_in_place).
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    srv = start_serve(
        work,
        digits_spec(source={"sweep": SWEEP}, storage=f"s3://{BUCKET}", replicas=1,
                    cpusPerReplica=0.5, batching={"maxBatchSize": 16, "batchWaitTimeoutS": 0.002}),
        args=("--serve-token-file", str(token_file)),
    )  # fmt: skip
    yield srv
    srv.stop()


def _predicted(stdout: str) -> list[int]:
    """The predicted classes in `rayfleet predict -o json` (the OIP response)."""
    outputs = {o["name"]: o for o in json.loads(stdout)["outputs"]}
    return outputs["predicted_class"]["data"]


def test_serve_prints_the_url_and_predict_finds_it(server, digits_uri):
    out = server.wait_for_output("Ctrl-C stops serving")
    assert f"{MODEL} <- sweep {SWEEP} (val_accuracy=" in out
    assert f"serving {MODEL} at {server.url} (1 replica(s)" in out
    assert f"rayfleet predict {MODEL} --input" in out
    split = read_split(digits_uri, "val")
    examples = server.spec.parent / "examples.json"
    examples.write_text(json.dumps(split.features[:3].tolist()))
    # The URL comes from the local state.
    result = server.cli("predict", MODEL, "--input", str(examples), "-o", "json")
    assert result.returncode == 0, result.stderr
    classes = _predicted(result.stdout)
    assert len(classes) == 3 and all(0 <= c <= 9 for c in classes)


@pytest.mark.security
def test_serve_pins_the_checkpoint_it_serves(server, trained):
    ckpt = parse_uri(trained.checkpoint_uri)
    run_path, name = ckpt.fs_path.rstrip("/").rsplit("/", 1)
    assert pinned(filesystem_for(ckpt), run_path) == {name: f"deployment-{MODEL}"}


@pytest.mark.security
def test_a_large_valid_body_is_answered_by_the_replica(server):
    """A body near the 1 MiB limit is parsed in a worker thread inside the Serve replica."""
    rows = 1_400
    x = np.random.default_rng(0).random((rows, 1, 8, 8)).round(6)
    body = json.dumps({"inputs": [{**TENSOR, "shape": [rows, 1, 8, 8], "data": x.tolist()}]})
    assert 512 * 1024 < len(body) < 1 << 20
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post(INFER, content=body)
        assert r.status_code == 200, r.text[:300]
        assert r.json()["outputs"][0]["shape"] == [rows, 10]
        assert client.get("/v2/health/live").status_code == 200


def _offline_logits(checkpoint_uri: str, features: np.ndarray, tmp: Path) -> np.ndarray:
    """The trained checkpoint evaluated with the recipe's own model, outside serving code."""
    uri = parse_uri(checkpoint_uri)
    manifest = download_verified(filesystem_for(uri), uri.fs_path, tmp)
    model = build_model(manifest["meta"]["model_config"])
    model.load_state_dict(torch.load(tmp / "state.pt", weights_only=True)["model"])
    with torch.no_grad():
        return model.eval()(torch.from_numpy(features.copy())).numpy()


def test_served_predictions_equal_offline_on_the_whole_val_split(
    server, trained, digits_uri, tmp_path
):
    split = read_split(digits_uri, "val")
    served = evaluate_served(server.url, MODEL, split.features, split.labels, concurrency=8)
    offline = _offline_logits(trained.checkpoint_uri, split.features, tmp_path)
    assert served.rows == len(split.labels) == 360
    np.testing.assert_array_equal(served.classes, offline.argmax(1))
    np.testing.assert_allclose(served.logits, offline, rtol=1e-4, atol=1e-4)
    offline_accuracy = float((offline.argmax(1) == split.labels).mean())
    assert served.accuracy == offline_accuracy
    # ... and equal to the trainer's own evaluation recorded in the checkpoint's manifest
    assert served.accuracy == pytest.approx(trained.metrics["val_accuracy"], abs=1e-9)


def _bad_calls():
    """Generated bad requests: the unit set's bodies, random shapes, dtypes, names, methods,
    and bodies over the limit (declared, streamed without a length, and 16 MiB)."""
    calls = [("POST", INFER, {"content": body}) for body in BAD.values()]
    rng = np.random.default_rng(0)
    for _ in range(15):
        shape = [int(d) for d in rng.integers(1, 4, size=rng.integers(1, 6))]
        if shape[1:] != [1, 8, 8]:
            tensor = {**TENSOR, "shape": shape, "data": [0.1] * int(np.prod(shape))}
            calls.append(("POST", INFER, {"json": {"inputs": [tensor]}}))
    for dtype in ("FP16", "FP64", "INT32", "BYTES", "BOOL", "fp32", 7, None):
        calls.append(("POST", INFER, {"json": {"inputs": [{**TENSOR, "datatype": dtype}]}}))
    for name in ("other", "Digits", "x" * 200):
        calls.append(("POST", f"/v2/models/{name}/infer", {"json": ONE}))
        calls.append(("GET", f"/v2/models/{name}/ready", {}))
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        calls.append((method, INFER, {}))
    calls += [("POST", "/v2/health/ready", {"json": ONE}), ("GET", "/v2/nope", {})]
    calls.append(("GET", "/", {}))
    huge = b" " * (2 << 20)  # over the 1 MiB default limit
    calls.append(("POST", INFER, {"content": huge}))
    calls.append(("POST", INFER, {"content": iter([huge[: 1 << 20], huge])}))
    calls.append(("POST", INFER, {"content": b"[" * (16 << 20)}))
    return calls


def test_bad_inputs_get_only_4xx_never_5xx(server):
    calls = _bad_calls()
    statuses = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for method, path, kwargs in calls:
            r = client.request(method, path, **kwargs)
            statuses.append(r.status_code)
            assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
            if method != "HEAD":
                assert "error" in r.json(), r.text[:300]
        assert client.post(INFER, json=ONE).status_code == 200
    assert len(calls) >= 60 and {400, 404, 405, 413} <= set(statuses)


def test_stock_tritonclient_with_its_defaults_gets_the_json_predictions(server, digits_uri):
    """tritonclient.http as a Triton/KServe user runs it: binary tensors (its default) on the
    way in and out, through Serve's ingress; the same numbers as a JSON request."""
    import tritonclient.http as triton

    x = read_split(digits_uri, "val").features[:5].astype(np.float32)
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_model_ready(MODEL)
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        inp = triton.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(MODEL, [inp])
    finally:
        client.close()
    tensor = {**TENSOR, "shape": list(x.shape), "data": x.reshape(-1).tolist()}
    doc = httpx.post(f"{server.url}{INFER}", json={"inputs": [tensor]}, timeout=30).json()
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert result.as_numpy("predicted_class").tolist() == outputs["predicted_class"]["data"]
    np.testing.assert_array_equal(
        result.as_numpy("logits").reshape(-1), np.float32(outputs["logits"]["data"])
    )


def test_status_lists_the_running_deployment(server):
    result = server.cli("serve", "status", "-o", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["serving"] is True
    app = next(a for a in doc["applications"] if a["name"] == "digits")
    assert (app["model"], app["status"], app["running"], app["target"]) == (
        MODEL, "RUNNING", 1, "1"
    )  # fmt: skip
    assert app["url"].startswith(server.url) and "checkpoint_e000001-" in app["checkpoint"]


def test_replicas_1_2_1_in_place_under_load_without_failed_requests(server):
    # No client retries: Serve alone must not drop any.
    with BoundedLoad(server.url, MODEL, ONE, retries=0) as load:
        time.sleep(0.5)
        up = server.cli("serve", str(server.spec), "--replicas", "2")
        assert up.returncode == 0, up.stderr
        assert "serving digits: 2 replica(s)" in up.stdout
        down = server.cli("serve", str(server.spec), "--replicas", "1")
        assert down.returncode == 0, down.stderr
        assert "serving digits: 1 replica(s)" in down.stdout
        time.sleep(0.5)
    assert load.failed == 0, load.errors[:3]
    assert load.ok > 50
    _assert_haproxy_listens_on_loopback_only(server)  # after the reloads the scaling did


def _assert_haproxy_listens_on_loopback_only(server: ServeProcess) -> None:
    """Every listener of this instance's HAProxy (HTTP, stats, Prometheus): none on all
    interfaces (Ray's template binds stats/metrics on `*`; rayfleet's wrapper rebinds them)."""
    listeners = set()
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if child.name() == "haproxy":
                conns = child.net_connections(kind="inet")
                listeners |= {c.laddr for c in conns if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass  # a worker that a reload replaced
    ports = {addr.port for addr in listeners}
    assert int(server.url.rsplit(":", 1)[1]) in ports and len(ports) >= 3, listeners
    assert all(ipaddress.ip_address(addr.ip).is_loopback for addr in listeners), listeners


KILL_ONE_REPLICA = """
import sys, time
import ray
from ray import serve
from rayfleet.serve import runtime
runtime.attach()
app = sys.argv[1]
def replicas():
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{app}#"))
before = replicas()
assert len(before) == 2, before
ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
killed = time.monotonic()
while time.monotonic() - killed < 15:
    states = serve.status().applications[app].deployments["ModelServer"].replica_states
    now = replicas()
    settled = states.get("RUNNING") == 2 and sum(states.values()) == 2
    if before[0] not in now and len(now) == 2 and settled:
        break
    time.sleep(0.2)
print(f"killed {before[0]}; replaced in {time.monotonic() - killed:.1f}s")
"""


def test_killed_replica_under_load_no_failures_with_cli_retries(server, record_property, capsys):
    up = server.cli("serve", str(server.spec), "--replicas", "2")
    assert up.returncode == 0, up.stderr
    started = time.monotonic()
    with (
        BoundedLoad(server.url, MODEL, ONE, retries=5, max_s=20) as with_retries,
        BoundedLoad(server.url, MODEL, ONE, retries=0, max_s=20) as without,
    ):
        time.sleep(1.0)
        kill = subprocess.run(
            [sys.executable, "-c", KILL_ONE_REPLICA, "digits"],
            capture_output=True, text=True, timeout=60, env=server.env,
        )  # fmt: skip
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    assert kill.returncode == 0, kill.stderr[-2000:]
    assert "replaced in" in kill.stdout
    report = (
        f"replica killed under load ({elapsed:.1f}s, {kill.stdout.strip()}): without retries "
        f"{without.failed} of {without.total} requests failed; with the CLI's retries "
        f"{with_retries.failed} of {with_retries.total} "
        f"({with_retries.client.stats.retried} retried)"
    )
    record_property("killed_replica", report)
    with capsys.disabled():  # reported on every run, not only on failure
        print(f"\n[serve] {report}")
    assert with_retries.failed == 0, (report, with_retries.errors[:3])
    assert with_retries.total > 20 and without.total > 20
    assert elapsed < 40  # the loops stop by themselves after 20 s


def _copy_checkpoint(src: str, dst: str, *, corrupt: bool) -> str:
    s, d = parse_uri(src), parse_uri(dst)
    fs = filesystem_for(s)
    pafs.copy_files(s.fs_path, d.fs_path, source_filesystem=fs, destination_filesystem=fs)
    if corrupt:  # same size, one byte flipped: only the sha256 can tell
        data = bytearray(read_bytes(fs, f"{d.fs_path}/state.pt"))
        data[len(data) // 2] ^= 0xFF
        write_bytes(fs, f"{d.fs_path}/state.pt", bytes(data))
    return str(d)


def test_corrupt_checkpoint_is_refused_at_deploy_time(server, trained):
    bad = _copy_checkpoint(
        trained.checkpoint_uri,
        f"s3://{BUCKET}/runs/serve-corrupt/checkpoint_e000001-0bad",
        corrupt=True,
    )
    no_sweep = ["--set", "spec.source.sweep=null"]
    started = time.monotonic()
    result = server.cli(
        "serve", str(server.spec), *no_sweep, "--set", f"spec.source.checkpoint={bad}"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        f"checkpoint {bad}: state.pt sha256 does not match manifest; this checkpoint is refused"
        in lines[0]
    )
    assert time.monotonic() - started < 30
    by_run = server.cli(
        "serve", str(server.spec), *no_sweep, "--set", "spec.source.run=serve-corrupt"
    )
    assert by_run.returncode == 2
    assert "run serve-corrupt: no verified checkpoint" in by_run.stderr
    assert "skipped checkpoint_e000001-0bad: state.pt sha256 does not match" in by_run.stderr
    # the running deployment still serves the good checkpoint
    response = httpx.get(f"{server.url}/v2/models/{MODEL}", timeout=10)
    meta = response.json()
    assert meta["versions"] == [trained.checkpoint_uri.rsplit("/", 1)[-1]]
    # ... and does not tell its clients where the checkpoint is stored (spec.exposeSource)
    assert "checkpoint" not in meta["parameters"]
    assert trained.checkpoint_uri not in response.text and BUCKET not in response.text


SERVE_DETAILS = """
import json
from rayfleet.serve import runtime
runtime.attach()
print(json.dumps(runtime._client().get_serve_details(), default=str))
"""


@pytest.mark.security
def test_auth_turned_on_in_place(server, trained):
    """spec.auth on a running deployment: /v2 wants the token, the probes stay open, the
    token reaches the replicas through their environment and is shown nowhere."""
    auth_on = ["--set", "spec.auth.tokenSecretName=digits-serve-token",
               "--set", "spec.exposeSource=true"]  # fmt: skip
    up = server.cli("serve", str(server.spec), *auth_on)
    assert up.returncode == 0, up.stdout + up.stderr
    meta_url = f"{server.url}/v2/models/{MODEL}"
    with httpx.Client(timeout=30) as client:
        anonymous = client.get(meta_url)
        assert anonymous.status_code == 401, anonymous.text[:300]
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        wrong = client.post(f"{server.url}{INFER}", json=ONE, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        ok = {"Authorization": f"Bearer {TOKEN}"}
        meta = client.get(meta_url, headers=ok)
        assert meta.status_code == 200, meta.text[:300]
        assert meta.json()["parameters"]["checkpoint"] == trained.checkpoint_uri  # opted in
        assert client.post(f"{server.url}{INFER}", json=ONE, headers=ok).status_code == 200
        for probe in ("/v2/health/live", "/v2/health/ready"):
            assert client.get(f"{server.url}{probe}").status_code == 200
    examples = server.spec.parent / "one.json"
    examples.write_text(json.dumps(np.zeros((1, 8, 8)).tolist()))
    refused = server.cli("predict", MODEL, "--input", str(examples), "--retries", "0")
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr, refused.stderr
    with_env = subprocess.run(
        [sys.executable, "-m", "rayfleet.cli.main", "predict", MODEL, "--input",
         str(examples), "-o", "json"],
        capture_output=True, text=True, timeout=120,
        env={**server.env, "RAYFLEET_SERVE_TOKEN": TOKEN},
    )  # fmt: skip
    assert with_env.returncode == 0, with_env.stderr
    assert len(_predicted(with_env.stdout)) == 1
    details = subprocess.run(
        [sys.executable, "-c", SERVE_DETAILS], capture_output=True, text=True, timeout=120,
        env=server.env,
    )  # fmt: skip
    assert details.returncode == 0, details.stderr[-2000:]
    assert "digits-serve-token" in details.stdout  # the Secret's name is in the config ...
    status = server.cli("serve", "status")
    for text in (details.stdout, status.stdout, status.stderr, up.stdout, up.stderr):
        assert TOKEN not in text  # ... the token is nowhere Serve or rayfleet shows
    assert TOKEN not in server.output()


def test_ctrl_c_stops_serving_cleanly(server):
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(60) == 0, server.output()[-2000:]
    assert server.output().rstrip().endswith("stopped")
    assert not Path(server.env["RAYFLEET_SERVE_STATE"]).exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/v2/health/live", timeout=2)
    # what it served, metered while it ran and once more as it stopped (issue 19)
    name = yaml.safe_load(server.spec.read_text())["metadata"]["name"]
    used_uri = parse_uri(f"s3://{BUCKET}/deployments/{name}/usage.json")
    used = json.loads(read_bytes(filesystem_for(used_uri), used_uri.fs_path))
    assert used["name"] == name and used["samples"] and used["replicaS"] > 0, used
    # ... and what its replica processes used, the load of the tests above included: some
    # CPU, and no more than the machine's cores over the time they served (Ray does not cap
    # a replica at what it requested, and the 30 s replica-count samples miss short scale-ups,
    # so "at most requested" would not be a law).
    wall = max(b["at"] for b in used["busy"]) - min(s["at"] for s in used["samples"])
    assert used["busy"] and 0 < used["busyCpuS"] <= (wall + 30) * os.cpu_count(), used
    assert used["busyGpuS"] is None  # a CPU deployment
