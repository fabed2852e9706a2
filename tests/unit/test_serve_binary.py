"""Triton's binary tensor data extension on the infer route, in process (no Ray, no server).

Requests are made two ways: by hand (bytes laid out as the extension says) and by the stock
`tritonclient.http` request builder and response parser with their defaults (binary inputs
and outputs), which is what a Triton/KServe user's code sends.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton

from rayfleet.serve.app import InferenceService
from rayfleet.serve.loading import load_model
from rayfleet.serve.protocol import BINARY_EXTENSION, HEADER_LENGTH

from .test_serve_loading import write_checkpoint
from .test_serve_protocol import _body, _call

pytestmark = pytest.mark.unit
INFER = "/v2/models/digits/infer"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = write_checkpoint(tmp_path_factory.mktemp("m") / "checkpoint_e000003-ab", 3)
    return InferenceService(load_model(str(path), name="digits"), max_request_bytes=2 << 20)


def _binary(x: np.ndarray, *, size: int | None = None, header: dict | None = None, **doc):
    raw = np.asarray(x, dtype="<f4").tobytes()
    params = {"binary_data_size": len(raw) if size is None else size}
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": params}
    head = json.dumps({"inputs": [{**tensor, **(header or {})}], **doc}).encode()
    return head + raw, len(head)


def _json_logits(service, x) -> np.ndarray:
    r = _call(service, "POST", INFER, content=_body(x))
    assert r.status_code == 200, r.text
    return np.reshape(r.json()["outputs"][0]["data"], (len(x), 10)).astype(np.float32)


def test_server_metadata_lists_the_extension(service):
    assert BINARY_EXTENSION in _call(service, "GET", "/v2").json()["extensions"]


def test_binary_input_json_output_equals_json_input(service):
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    body, n = _binary(x)
    r = _call(service, "POST", INFER, content=body, headers={HEADER_LENGTH: str(n)})
    assert r.status_code == 200, r.text
    assert HEADER_LENGTH.lower() not in r.headers  # no binary output asked for: plain JSON
    logits = np.reshape(r.json()["outputs"][0]["data"], (3, 10)).astype(np.float32)
    np.testing.assert_array_equal(logits, _json_logits(service, x))


def test_binary_outputs_come_back_as_bytes_after_the_json_header(service):
    x = np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32)
    outputs = [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "predicted_class"}]
    body, n = _binary(x, outputs=outputs)
    r = _call(service, "POST", INFER, content=body, headers={HEADER_LENGTH: str(n)})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers[HEADER_LENGTH])
    doc = json.loads(r.content[:length])
    logits_meta, classes = doc["outputs"]
    assert logits_meta["parameters"] == {"binary_data_size": 2 * 10 * 4}
    assert "data" not in logits_meta
    logits = np.frombuffer(r.content[length:], dtype="<f4").reshape(2, 10)
    np.testing.assert_array_equal(logits, _json_logits(service, x))
    assert classes["data"] == logits.argmax(1).tolist()


def test_stock_tritonclient_request_and_parser_with_defaults(service):
    """tritonclient's own builder (binary input, no outputs listed: binary_data_output) and
    its own response parser, both with their defaults."""
    x = np.random.default_rng(2).random((4, 1, 8, 8), dtype=np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True by default
    body, json_size = triton.InferenceServerClient.generate_request_body([inp])
    assert json_size is not None  # the stock default is the binary extension
    r = _call(service, "POST", INFER, content=body, headers={HEADER_LENGTH: str(json_size)})
    assert r.status_code == 200, r.text
    result = triton.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers[HEADER_LENGTH])
    )
    np.testing.assert_array_equal(result.as_numpy("logits"), _json_logits(service, x))
    assert (
        result.as_numpy("predicted_class").tolist() == _json_logits(service, x).argmax(1).tolist()
    )
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(1), 1.0, rtol=1e-5)


def _bad_binary_calls():
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    body, n = _binary(x)
    short, n_short = _binary(x, size=100)
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    nan_body, n_nan = _binary(nan)
    fp64_input = {"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP64",
                  "parameters": {"binary_data_size": 1024}}  # fmt: skip
    fp64 = json.dumps({"inputs": [fp64_input]}).encode()
    not_bool = [{"name": "logits", "parameters": {"binary_data": 1}}]
    class_count = [{"name": "logits", "parameters": {"class_count": 3}}]
    return {
        "header beyond the body": (body, str(len(body) + 1)),
        "header not a number": (body, "ten"),
        "header too short (cuts the JSON)": (body, "7"),
        "missing header with binary_data_size": (body[:n], None),
        "size does not match the shape": (short, str(n_short)),
        "fewer bytes than binary_data_size": (body[:-8], str(n)),
        "trailing bytes after the tensors": (body + b"\0" * 4, str(n)),
        "wrong dtype": (fp64 + b"\0" * 1024, str(len(fp64))),
        "NaN in a binary tensor": (nan_body, str(n_nan)),
        "negative size": (_binary(x, size=-4)[0], str(_binary(x, size=-4)[1])),
        "header not JSON": (b"\xff" * 10 + body, "10"),
        "binary_data not a bool": _with_outputs(x, not_bool),
        "classification extension": _with_outputs(x, class_count),
    }  # fmt: skip


def _with_outputs(x, outputs):
    body, n = _binary(x, outputs=outputs)
    return body, str(n)


@pytest.mark.parametrize("case", list(_bad_binary_calls()))
def test_bad_binary_requests_are_4xx_with_a_message(service, case):
    body, header = _bad_binary_calls()[case]
    headers = {HEADER_LENGTH: header} if header is not None else {}
    r = _call(service, "POST", INFER, content=body, headers=headers)
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text[:300])
    assert r.json()["error"], r.text
