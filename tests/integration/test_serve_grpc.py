"""The KServe v2 gRPC API end to end: one `rayfleet serve` with spec.grpcPort (its own embedded
Ray, Serve behind the default HAProxy ingress, HTTP and gRPC on free loopback ports), asked
by the stock client (tritonclient.grpc, from its own venv: `make grpc-client`) and by a
hand-made grpcio client on our stubs, with the REST API's answers as the reference.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from rayfleet.local import free_serve_port
from rayfleet.serve.grpc import predict_v2_pb2 as pb
from rayfleet.serve.grpc import predict_v2_pb2_grpc as pb_grpc

from ..conftest import REPO
from ..unit.test_serve_grpc import BAD
from ..unit.test_serve_loading import write_checkpoint
from .serving import ServeProcess, start_serve

pytestmark = pytest.mark.integration
MODEL = "digits"
CLIENT_PYTHON = REPO / ".venv-grpc-client" / "bin" / "python"
CLIENT_SCRIPT = Path(__file__).with_name("grpc_client.py")
X = np.random.default_rng(7).random((4, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-grpc")
    checkpoint = write_checkpoint(work / "checkpoint_e000002-aa", 2)
    grpc_port = free_serve_port()
    doc = {
        "apiVersion": "rayfleet.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {"source": {"checkpoint": str(checkpoint)}, "replicas": 1,
                 "cpusPerReplica": 0.5, "grpcPort": grpc_port},
    }  # fmt: skip
    srv = start_serve(work, doc)
    srv.grpc = f"127.0.0.1:{grpc_port}"
    try:
        _wait_grpc_ready(srv, timeout=60)
        yield srv
    finally:
        srv.stop()


def _wait_grpc_ready(srv: ServeProcess, timeout: float) -> None:
    """Ready as a gRPC client sees it too: ServerReady answers through the gRPC port."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(srv.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while True:
            assert srv.proc.poll() is None, srv.output()[-3000:]
            assert time.monotonic() < deadline, srv.output()[-3000:]
            try:
                if stub.ServerReady(pb.ServerReadyRequest(), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass  # Serve or its gRPC ingress is not up yet
            time.sleep(0.5)


def _rest(srv: ServeProcess) -> dict[str, list]:
    """The REST API's outputs for X (JSON tensors): the reference."""
    tensor = {"name": "input", "shape": list(X.shape), "datatype": "FP32",
              "data": X.reshape(-1).tolist()}  # fmt: skip
    response = httpx.post(f"{srv.url}/v2/models/{MODEL}/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def test_stock_tritonclient_grpc_gets_the_rest_predictions(server, tmp_path):
    if not CLIENT_PYTHON.exists():
        pytest.skip("no .venv-grpc-client (tritonclient[grpc]); build it with make grpc-client")
    examples = tmp_path / "x.npy"
    np.save(examples, X)
    done = subprocess.run(
        [str(CLIENT_PYTHON), str(CLIENT_SCRIPT), server.grpc, MODEL, str(examples)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert (doc["live"], doc["ready"], doc["model_ready"]) == (True, True, True)
    assert doc["server"]["name"] == "rayfleet"
    assert doc["model"] == {
        "name": MODEL,
        "versions": ["checkpoint_e000002-aa"],
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
        "outputs": ["logits", "probabilities", "predicted_class"],
    }
    assert doc["id"] == "grpc-client"
    rest = _rest(server)
    assert (
        np.asarray(doc["outputs"]["predicted_class"]).reshape(-1).tolist()
        == (rest["predicted_class"])
    )
    for name in ("logits", "probabilities"):
        np.testing.assert_allclose(
            np.asarray(doc["outputs"][name]).reshape(-1), rest[name], rtol=1e-5, atol=1e-6
        )
    codes = {what: r["code"] for what, r in doc["refused"].items()}
    assert codes == {
        "wrong shape": "StatusCode.INVALID_ARGUMENT",
        "wrong datatype": "StatusCode.INVALID_ARGUMENT",
        "wrong input name": "StatusCode.INVALID_ARGUMENT",
        "unknown output": "StatusCode.INVALID_ARGUMENT",
        "NaN input": "StatusCode.INVALID_ARGUMENT",
        "unknown model": "StatusCode.NOT_FOUND",
    }, doc["refused"]
    assert "the model takes FP32" in doc["refused"]["wrong datatype"]["message"]


def test_grpcio_client_on_our_stubs_raw_typed_and_refused(server):
    rest = _rest(server)
    raw = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[{"name": "input", "datatype": "FP32", "shape": list(X.shape)}],
        raw_input_contents=[X.astype("<f4").tobytes()],
        outputs=[{"name": "predicted_class"}],
    )
    typed = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[{"name": "input", "datatype": "FP32", "shape": list(X.shape),
                 "contents": {"fp32_contents": X.reshape(-1).tolist()}}],
        outputs=[{"name": "predicted_class"}],
    )  # fmt: skip
    refused = {}
    with grpc.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        for request in (raw, typed):
            answer = stub.ModelInfer(request, timeout=30)
            assert [o.name for o in answer.outputs] == ["predicted_class"]
            predicted = np.frombuffer(answer.raw_output_contents[0], "<i8").tolist()
            assert predicted == rest["predicted_class"]
        for what in ("no batch dim", "raw and typed", "typed in the wrong field", "no inputs"):
            try:
                stub.ModelInfer(BAD[what], timeout=30)
                refused[what] = ("OK", "")
            except grpc.RpcError as exc:
                refused[what] = (exc.code().name, exc.details())
    assert {what: code for what, (code, _) in refused.items()} == dict.fromkeys(
        refused, "INVALID_ARGUMENT"
    ), refused
    assert "send every input one way" in refused["raw and typed"][1]
