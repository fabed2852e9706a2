"""The Open Inference Protocol rules and the FastAPI app, without Ray (ASGI in process)."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import numpy as np
import pytest

from rayfleet.serve.app import InferenceService, build_app
from rayfleet.serve.loading import Signature, load_model
from rayfleet.serve.protocol import (
    OUTPUTS,
    ProtocolError,
    build_request,
    encode_response,
    parse_infer_request,
)

from .test_serve_loading import write_checkpoint

pytestmark = pytest.mark.unit
SIG = Signature(shape=(1, 8, 8), dtype="float32", num_classes=10)


def _body(x, **extra) -> bytes:
    x = np.asarray(x, dtype=np.float32)
    data = x.reshape(-1).tolist()
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def test_flat_and_nested_data_parse_to_the_same_batch():
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    flat = parse_infer_request(_body(x, id="r1"), SIG)
    nested_doc = json.loads(_body(x))
    nested_doc["inputs"][0]["data"] = x.tolist()
    nested = parse_infer_request(json.dumps(nested_doc).encode(), SIG)
    assert flat.id == "r1" and flat.outputs == OUTPUTS
    np.testing.assert_array_equal(flat.array, x)
    np.testing.assert_array_equal(nested.array, x)
    assert flat.array.dtype == np.float32


def _tensor(**changes):
    t = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}
    t.update(changes)
    return {k: v for k, v in t.items() if v is not ...}


BAD = {
    "not json": b"{nope",
    "not utf-8": b"\xff\xfe\x00",
    "empty": b"",
    "array body": b"[1, 2]",
    "no inputs": b"{}",
    "inputs not a list": json.dumps({"inputs": {"name": "input"}}).encode(),
    "two inputs": json.dumps({"inputs": [_tensor(), _tensor()]}).encode(),
    "unknown request field": json.dumps({"inputs": [_tensor()], "batch": 1}).encode(),
    "id not a string": json.dumps({"id": 3, "inputs": [_tensor()]}).encode(),
    "wrong input name": json.dumps({"inputs": [_tensor(name="x")]}).encode(),
    "missing data": json.dumps({"inputs": [_tensor(data=...)]}).encode(),
    "unknown datatype": json.dumps({"inputs": [_tensor(datatype="FLOAT")]}).encode(),
    "wrong datatype": json.dumps({"inputs": [_tensor(datatype="INT32")]}).encode(),
    "bytes datatype": json.dumps({"inputs": [_tensor(datatype="BYTES")]}).encode(),
    "no batch dim": json.dumps({"inputs": [_tensor(shape=[1, 8, 8])]}).encode(),
    "wrong example shape": json.dumps({"inputs": [_tensor(shape=[1, 64])]}).encode(),
    "zero batch": json.dumps({"inputs": [_tensor(shape=[0, 1, 8, 8], data=[])]}).encode(),
    "negative dim": json.dumps({"inputs": [_tensor(shape=[-1, 1, 8, 8])]}).encode(),
    "float dim": json.dumps({"inputs": [_tensor(shape=[1.0, 1, 8, 8])]}).encode(),
    "too few values": json.dumps({"inputs": [_tensor(data=[0.5] * 63)]}).encode(),
    "too many values": json.dumps({"inputs": [_tensor(data=[0.5] * 65)]}).encode(),
    "strings": json.dumps({"inputs": [_tensor(data=["0.5"] * 64)]}).encode(),
    "bools": json.dumps({"inputs": [_tensor(data=[True] * 64)]}).encode(),
    "nulls": json.dumps({"inputs": [_tensor(data=[None] * 64)]}).encode(),
    "ragged nesting": json.dumps({"inputs": [_tensor(data=[[0.5] * 8, 0.5])]}).encode(),
    "NaN": _body(np.zeros((1, 1, 8, 8))).replace(b"0.0", b"NaN", 1),
    "Infinity": _body(np.zeros((1, 1, 8, 8))).replace(b"0.0", b"-Infinity", 1),
    "float32 overflow": json.dumps({"inputs": [_tensor(data=[1e39] * 64)]}).encode(),
    "huge int": json.dumps({"inputs": [_tensor(data=[10**400] + [0] * 63)]}).encode(),
    "unknown output": json.dumps({"inputs": [_tensor()], "outputs": [{"name": "emb"}]}).encode(),
    "outputs not objects": json.dumps({"inputs": [_tensor()], "outputs": ["logits"]}).encode(),
    "deep nesting": b"[" * 50_000 + b"]" * 50_000,
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_requests_are_400_with_a_reason(name):
    with pytest.raises(ProtocolError) as err:
        parse_infer_request(BAD[name], SIG)
    assert err.value.status == 400 and err.value.message


def test_response_has_requested_outputs_in_protocol_shape():
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    request = parse_infer_request(
        _body(
            np.zeros((2, 1, 8, 8)),
            id="a",
            outputs=[{"name": "predicted_class"}, {"name": "probabilities"}],
        ),
        SIG,
    )
    doc = encode_response("digits", "v1", request, logits)
    assert doc["model_name"] == "digits" and doc["model_version"] == "v1" and doc["id"] == "a"
    cls, probs = doc["outputs"]
    assert cls == {"name": "predicted_class", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert probs["shape"] == [2, 3] and probs["datatype"] == "FP32"
    np.testing.assert_allclose(np.reshape(probs["data"], (2, 3)).sum(1), 1.0, rtol=1e-6)


def test_build_request_accepts_one_example_or_a_batch():
    meta_input = {"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}
    one = build_request(np.zeros((1, 8, 8)), meta_input)
    assert one["inputs"][0]["shape"] == [1, 1, 8, 8]
    batch = build_request(np.zeros((4, 1, 8, 8)), meta_input, request_id="x")
    assert batch["inputs"][0]["shape"] == [4, 1, 8, 8] and batch["id"] == "x"
    parse_infer_request(json.dumps(batch).encode(), SIG)
    with pytest.raises(ValueError, match=r"input has shape \[8, 8\]"):
        build_request(np.zeros((8, 8)), meta_input)


# ------------------------------------------------------------------------------ the app


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("m") / "checkpoint_e000003-ab", 3)
    return InferenceService(load_model(str(path), name="digits"), max_request_bytes=64 * 1024)


async def _chunks(parts):
    for part in parts:
        yield part


def _call(service, method, path, **kwargs):
    async def go():
        transport = httpx.ASGITransport(app=build_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_health_and_metadata(service):
    assert _call(service, "GET", "/v2/health/live").json() == {"live": True}
    assert _call(service, "GET", "/v2/health/ready").json() == {"ready": True}
    assert _call(service, "GET", "/v2").json()["name"] == "rayfleet"
    meta = _call(service, "GET", "/v2/models/digits").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in meta["outputs"]] == list(OUTPUTS)
    assert meta["versions"] == ["checkpoint_e000003-ab"]
    ready = _call(service, "GET", "/v2/models/digits/ready").json()
    assert ready == {"name": "digits", "ready": True}
    versioned = _call(service, "GET", "/v2/models/digits/versions/checkpoint_e000003-ab/ready")
    assert versioned.status_code == 200


def test_infer_matches_the_model(service):
    x = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    r = _call(service, "POST", "/v2/models/digits/infer", content=_body(x))
    assert r.status_code == 200, r.text
    logits = np.reshape(r.json()["outputs"][0]["data"], (4, 10))
    np.testing.assert_array_equal(logits.astype(np.float32), service.model.predict(x))


def test_batched_forward_splits_rows_back_to_their_requests(service):
    rng = np.random.default_rng(2)
    arrays = [rng.random((n, 1, 8, 8), dtype=np.float32) for n in (1, 3, 2)]
    outs = service._forward_batch(arrays)
    for x, out in zip(arrays, outs, strict=True):
        np.testing.assert_allclose(out, service.model.predict(x), rtol=1e-5, atol=1e-6)


def _generated_bad_calls(rng: random.Random):
    ok = json.loads(_body(np.zeros((1, 1, 8, 8))))
    calls = [("POST", "/v2/models/digits/infer", {"content": body}) for body in BAD.values()]
    for _ in range(20):  # random wrong shapes with matching data lengths
        shape = [rng.randint(1, 3) for _ in range(rng.randint(1, 5))]
        if shape[1:] == [1, 8, 8]:
            continue
        doc = {"inputs": [{**ok["inputs"][0], "shape": shape, "data": [0.1] * int(np.prod(shape))}]}
        calls.append(("POST", "/v2/models/digits/infer", {"json": doc}))
    for dtype in ("FP16", "FP64", "INT64", "UINT8", "BOOL", "fp32", 5, None):
        doc = {"inputs": [{**ok["inputs"][0], "datatype": dtype}]}
        calls.append(("POST", "/v2/models/digits/infer", {"json": doc}))
    for name in ("other", "DIGITS", "digits2", "%00", "a" * 300):
        calls.append(("POST", f"/v2/models/{name}/infer", {"json": ok}))
        calls.append(("GET", f"/v2/models/{name}", {}))
    calls.append(("POST", "/v2/models/digits/versions/nope/infer", {"json": ok}))
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        calls.append((method, "/v2/models/digits/infer", {}))
    calls += [("POST", "/v2/health/live", {}), ("DELETE", "/v2/models/digits", {})]
    calls.append(("GET", "/nope", {}))
    calls.append(("POST", "/v2/models/digits/infer", {"content": b"x" * (65 * 1024)}))
    calls.append(("POST", "/v2/models/digits/infer", {"content": _chunks([b"[" * 40_000] * 2)}))
    calls.append(
        (
            "POST",
            "/v2/models/digits/infer",
            {"json": ok, "headers": {"Inference-Header-Content-Length": "10"}},
        )
    )
    return calls


def test_generated_bad_inputs_get_4xx_json_errors(service):
    calls = _generated_bad_calls(random.Random(0))
    for method, path, kwargs in calls:
        r = _call(service, method, path, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:200])
        assert "error" in r.json(), r.text[:200]


def test_oversized_body_is_413_declared_or_streamed(service):
    big = b" " * (65 * 1024)
    assert _call(service, "POST", "/v2/models/digits/infer", content=big).status_code == 413
    parts = _chunks([big[:40_000], big[40_000:]])
    streamed = _call(service, "POST", "/v2/models/digits/infer", content=parts)
    assert streamed.status_code == 413 and "exceeds the limit" in streamed.json()["error"]
