"""The Open Inference Protocol (KServe v2 / Triton REST) JSON format, for one classifier.

Request:  {"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?}
Response: {"model_name", "model_version", "id"?, "outputs": [{"name", "shape", "datatype",
           "data"}]}
Errors:   {"error": "<message>"} with a 4xx status.

Tensor data is row-major and may be flat or nested. The batch dimension comes first: a model
whose examples are [1, 8, 8] takes [N, 1, 8, 8]. Outputs: `logits` and `probabilities`
(FP32, [N, classes]) and `predicted_class` (INT64, [N]); a request may ask for a subset.

Everything here is pure (numpy only), so each rule is unit-tested without a server, and
every way a request can be wrong maps to a ProtocolError with its HTTP status.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayfleet.serve.loading import Signature

OUTPUTS = ("logits", "probabilities", "predicted_class")
KNOWN_DATATYPES = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES", "BF16",
}  # fmt: skip
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "data", "parameters"}
MAX_DIM = 1 << 24


class ProtocolError(Exception):
    """A request the protocol (or this model) does not accept; `status` is the HTTP code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class InferRequest:
    id: str | None
    array: np.ndarray  # [N, *signature.shape], the signature's dtype
    outputs: tuple[str, ...]


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def _flatten(data: list, depth: int) -> list:
    """Nested lists -> one flat list (row-major); at most `depth` levels of nesting."""
    if not data or not isinstance(data[0], list):
        return data
    if depth <= 0:
        raise _bad("input data is nested deeper than its shape")
    flat: list = []
    for item in data:
        if not isinstance(item, list):
            raise _bad("input data mixes numbers and lists at one level; nest it evenly")
        flat.extend(_flatten(item, depth - 1))
    return flat


def parse_infer_request(body: bytes, sig: Signature) -> InferRequest:
    """Validate an infer request body against the model's signature; ProtocolError if wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _bad(f"request body is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(doc, dict):
        raise _bad('request body must be a JSON object with "inputs"')
    unknown = set(doc) - _REQUEST_KEYS
    if unknown:
        raise _bad(f"unknown request field(s) {sorted(unknown)}; allowed: {sorted(_REQUEST_KEYS)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad('"id" must be a string')
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad('"inputs" must be a non-empty list of tensors')
    if len(inputs) != 1:
        raise _bad(f"model takes 1 input ({sig.input_name!r}); got {len(inputs)}")
    array = _parse_input(inputs[0], sig)
    return InferRequest(request_id, array, _parse_outputs(doc.get("outputs")))


def _parse_input(tensor: Any, sig: Signature) -> np.ndarray:
    if not isinstance(tensor, dict):
        raise _bad("each input must be an object with name, shape, datatype and data")
    unknown = set(tensor) - _INPUT_KEYS
    if unknown:
        raise _bad(f"unknown input field(s) {sorted(unknown)}; allowed: {sorted(_INPUT_KEYS)}")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise _bad(f"input is missing {', '.join(missing)}")
    name, shape, datatype, data = (tensor[k] for k in ("name", "shape", "datatype", "data"))
    if name != sig.input_name:
        raise _bad(f"unknown input {name!r}; the model's input is {sig.input_name!r}")
    if not isinstance(datatype, str) or datatype not in KNOWN_DATATYPES:
        raise _bad(f"datatype {datatype!r} is not an Open Inference Protocol datatype")
    if datatype != sig.datatype:
        raise _bad(f"input {name!r} has datatype {datatype}; the model takes {sig.datatype}")
    expected = [-1, *sig.shape]
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or any(d < 0 or d > MAX_DIM for d in shape)
    ):
        raise _bad(f"shape must be a list of non-negative integers like {expected}")
    if len(shape) != len(expected) or tuple(shape[1:]) != sig.shape or shape[0] < 1:
        raise _bad(f"input {name!r} has shape {shape}; the model takes {expected} (N >= 1)")
    if not isinstance(data, list):
        raise _bad("data must be a JSON array of numbers (flat or nested)")
    flat = _flatten(data, len(shape))
    count = math.prod(shape)
    if len(flat) != count:
        raise _bad(f"input {name!r} has {len(flat)} values; shape {shape} needs {count}")
    if not set(map(type, flat)) <= {int, float}:  # no bools, strings, nulls or objects
        raise _bad(f"input {name!r} data must be numbers only ({sig.datatype})")
    try:
        array = np.asarray(flat, dtype=np.float64)
    except OverflowError:
        raise _bad(f"input {name!r} has a number out of range") from None
    if not np.isfinite(array).all():
        raise _bad(f"input {name!r} has NaN or infinite values")
    with np.errstate(over="ignore"):
        array = array.astype(sig.dtype).reshape(shape)
    if not np.isfinite(array).all():
        raise _bad(f"input {name!r} has values out of {sig.datatype} range")
    return array


def _parse_outputs(outputs: Any) -> tuple[str, ...]:
    if outputs is None:
        return OUTPUTS
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise _bad('"outputs" must be a list of objects with a "name"')
    names = tuple(o["name"] for o in outputs)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise _bad(f"unknown output(s) {unknown}; the model has {list(OUTPUTS)}")
    return names or OUTPUTS


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def encode_response(
    model_name: str, version: str, request: InferRequest, logits: np.ndarray
) -> dict[str, Any]:
    """The infer response: the requested outputs, each flattened row-major."""
    n, classes = logits.shape
    tensors = {
        "logits": lambda: ("FP32", [n, classes], logits.reshape(-1).tolist()),
        "probabilities": lambda: ("FP32", [n, classes], softmax(logits).reshape(-1).tolist()),
        "predicted_class": lambda: ("INT64", [n], logits.argmax(axis=1).tolist()),
    }
    outputs = []
    for name in request.outputs:
        datatype, shape, data = tensors[name]()
        outputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    doc: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    return doc


def model_metadata(model_name: str, version: str, sig: Signature, extra: dict) -> dict[str, Any]:
    """GET /v2/models/NAME: name, versions, platform, input and output tensors."""
    return {
        "name": model_name,
        "versions": [version],
        "platform": "pytorch",
        "inputs": [{"name": sig.input_name, "datatype": sig.datatype, "shape": [-1, *sig.shape]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, sig.num_classes]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, sig.num_classes]},
            {"name": "predicted_class", "datatype": "INT64", "shape": [-1]},
        ],
        "parameters": extra,
    }


def build_request(
    examples: np.ndarray, sig_input: dict[str, Any], request_id: str | None = None
) -> dict[str, Any]:
    """An infer request for `examples` ([N, ...] or one example) given the model's input
    metadata ({"name", "datatype", "shape": [-1, ...]}); what `rayfleet predict` sends."""
    per_example = list(sig_input["shape"][1:])
    arr = np.asarray(examples)
    if list(arr.shape) == per_example:
        arr = arr[None]
    if list(arr.shape[1:]) != per_example:
        raise ValueError(
            f"input has shape {list(arr.shape)}; the model takes {sig_input['shape']} "
            f"(or one example shaped {per_example})"
        )
    doc: dict[str, Any] = {
        "inputs": [
            {
                "name": sig_input["name"],
                "shape": list(arr.shape),
                "datatype": sig_input["datatype"],
                "data": arr.reshape(-1).tolist(),
            }
        ]
    }
    if request_id is not None:
        doc["id"] = request_id
    return doc
