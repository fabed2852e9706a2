"""The Open Inference Protocol (KServe v2 / Triton REST) JSON format, for one model.

Request:  {"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data"}], "outputs"?}
Response: {"model_name", "model_version", "id"?, "outputs": [{"name", "shape", "datatype",
           "data"}]}
Errors:   {"error": "<message>"} with a 4xx status.

Triton's binary tensor data extension ("binary_tensor_data", what `tritonclient.http` uses by
default): the body is a JSON header of `Inference-Header-Content-Length` bytes followed by
raw tensors. An input with `parameters.binary_data_size` has no `data`; its little-endian,
row-major bytes follow the header, in input order. An output asked for with
`parameters.binary_data` (or every output, with the request parameter `binary_data_output`)
comes back the same way: the response's JSON header (its length in the response header
`Inference-Header-Content-Length`) gives each such output `parameters.binary_data_size` and
no `data`, and the bytes follow. Binary inputs skip JSON number parsing entirely.

Tensor data is row-major and may be flat or nested. The batch dimension comes first: a model
whose examples are [1, 8, 8] takes [N, 1, 8, 8]. A model may take several named inputs (the
signature's; optional ones, absent from a request, are filled in per row as the signature
says), all with the same N. A classifier answers `logits` and `probabilities` (FP32,
[N, classes]) and `predicted_class` (INT64, [N]); a model with tensor outputs (digits-gan's
generator: `image`, FP32 [N, 1, 8, 8]) answers those. A request may ask for a subset.

Everything here is pure (numpy only), so each rule is unit-tested without a server, and
every way a request can be wrong maps to a ProtocolError with its HTTP status.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayfleet.serve.loading import (
    CLASS_OUTPUTS,
    NUMPY_DTYPES,
    OIP_DATATYPES,
    Signature,
    TensorSpec,
)

OUTPUTS = CLASS_OUTPUTS  # a classifier's
KNOWN_DATATYPES = {
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES", "BF16",
}  # fmt: skip
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
_INPUT_KEYS = {"name", "shape", "datatype", "data", "parameters"}
BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "Inference-Header-Content-Length"
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
    inputs: dict[str, np.ndarray]  # every input of the signature, [N, *its shape], its dtype
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str] = frozenset()  # answered as raw bytes (binary extension)

    @property
    def array(self) -> np.ndarray:
        """The first (main) input: a classifier's only one."""
        return next(iter(self.inputs.values()))


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


def header_length(value: str | None, body_size: int) -> int | None:
    """The `Inference-Header-Content-Length` request header, checked against the body."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise _bad(f"{HEADER_LENGTH} must be a byte count; got {value[:40]!r}")
    length = int(value)
    if length > body_size:
        raise _bad(
            f"{HEADER_LENGTH} is {length} but the body has only {body_size} bytes; it must be "
            "the length of the JSON header that starts the body"
        )
    return length


def parse_infer_request(
    body: bytes, sig: Signature, *, json_length: int | None = None
) -> InferRequest:
    """Validate an infer request body against the model's signature; ProtocolError if wrong.

    `json_length` (from `header_length`): the body is a JSON header of that many bytes then
    binary tensors (the binary tensor data extension); None: the whole body is JSON."""
    view = memoryview(body)
    header = body if json_length is None else view[:json_length]
    try:
        doc = json.loads(bytes(header) if json_length is not None else header)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        where = "request body" if json_length is None else f"JSON header ({HEADER_LENGTH} bytes)"
        raise _bad(f"{where} is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(doc, dict):
        raise _bad('request body must be a JSON object with "inputs"')
    unknown = set(doc) - _REQUEST_KEYS
    if unknown:
        raise _bad(f"unknown request field(s) {sorted(unknown)}; allowed: {sorted(_REQUEST_KEYS)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad('"id" must be a string')
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise _bad('"parameters" must be an object')
    all_binary = parameters.get("binary_data_output", False)
    if not isinstance(all_binary, bool):
        raise _bad("parameters.binary_data_output must be true or false")
    binary = None if json_length is None else view[json_length:]
    arrays = _parse_inputs(doc.get("inputs"), sig, binary)
    outputs, binary_outputs = _parse_outputs(doc.get("outputs"), all_binary, sig.output_names)
    return InferRequest(request_id, arrays, outputs, binary_outputs)


def _parse_inputs(inputs: Any, sig: Signature, binary: memoryview | None) -> dict[str, np.ndarray]:
    """Every input of the signature, in its order: those sent (checked), the optional ones
    not sent filled in; binary inputs take their bytes after the header in the order sent."""
    if not isinstance(inputs, list) or not inputs:
        raise _bad('"inputs" must be a non-empty list of tensors')
    specs = sig.input_specs
    names = list(specs)
    listed = names[0] if len(names) == 1 else names
    if len(inputs) > len(specs):
        raise _bad(f"model takes {len(specs)} input(s) ({listed!r}); got {len(inputs)}")
    arrays: dict[str, np.ndarray] = {}
    used = 0
    for tensor in inputs:
        rest = None if binary is None else binary[used:]
        name, array, size = _parse_input(tensor, specs, listed, rest)
        if name in arrays:
            raise _bad(f"input {name!r} is sent twice; send each input once")
        arrays[name] = array
        used += size
    if binary is not None and used != len(binary):
        raise _bad(
            f"the body has {len(binary)} bytes after the JSON header but the inputs' "
            f"binary_data_size add up to {used}"
        )
    missing = [n for n, spec in specs.items() if n not in arrays and not spec.optional]
    if missing:
        raise _bad(f"input(s) {missing} missing; the model takes {names}")
    rows = {n: len(a) for n, a in arrays.items()}
    if len(set(rows.values())) > 1:
        raise _bad(f"inputs have different batch sizes {rows}; every input needs the same N")
    n = next(iter(rows.values()))
    return {
        name: arrays[name] if name in arrays else spec.default_rows(n)
        for name, spec in specs.items()
    }


def _binary_size(tensor: dict, name: Any) -> int | None:
    params = tensor.get("parameters", {})
    if not isinstance(params, dict):
        raise _bad(f"input {name!r}: parameters must be an object")
    unknown = set(params) - {"binary_data_size"}
    if unknown:
        raise _bad(f"input {name!r}: unknown parameter(s) {sorted(unknown)}")
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
    return size


def _parse_input(
    tensor: Any, specs: dict[str, TensorSpec], listed: Any, binary: memoryview | None
) -> tuple[str, np.ndarray, int]:
    """(its name, the input as an array in the spec's dtype, how many bytes of `binary` it
    took)."""
    if not isinstance(tensor, dict):
        raise _bad("each input must be an object with name, shape, datatype and data")
    unknown = set(tensor) - _INPUT_KEYS
    if unknown:
        raise _bad(f"unknown input field(s) {sorted(unknown)}; allowed: {sorted(_INPUT_KEYS)}")
    size = _binary_size(tensor, tensor.get("name"))
    required = ("name", "shape", "datatype") + (("data",) if size is None else ())
    missing = [k for k in required if k not in tensor]
    if missing:
        raise _bad(f"input is missing {', '.join(missing)}")
    name, shape, datatype = (tensor[k] for k in ("name", "shape", "datatype"))
    spec = specs.get(name) if isinstance(name, str) else None
    if spec is None:
        what = "input is" if isinstance(listed, str) else "inputs are"
        raise _bad(f"unknown input {name!r}; the model's {what} {listed!r}")
    if not isinstance(datatype, str) or datatype not in KNOWN_DATATYPES:
        raise _bad(f"datatype {datatype!r} is not an Open Inference Protocol datatype")
    if datatype not in spec.datatypes:
        takes = " or ".join(spec.datatypes)
        raise _bad(f"input {name!r} has datatype {datatype}; the model takes {takes}")
    expected = [-1, *spec.shape]
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or any(d < 0 or d > MAX_DIM for d in shape)
    ):
        raise _bad(f"shape must be a list of non-negative integers like {expected}")
    if len(shape) != len(expected) or tuple(shape[1:]) != spec.shape or shape[0] < 1:
        raise _bad(f"input {name!r} has shape {shape}; the model takes {expected} (N >= 1)")
    if size is not None:
        array = _binary_input(name, shape, size, datatype, spec, binary)
    else:
        array, size = _json_input(name, shape, tensor["data"], spec), 0
    return name, array, size


def _binary_input(
    name: str,
    shape: list[int],
    size: int,
    datatype: str,
    spec: TensorSpec,
    binary: memoryview | None,
) -> np.ndarray:
    """An input sent as raw bytes: exactly shape x itemsize little-endian `datatype` values,
    converted to the spec's dtype."""
    if binary is None:
        raise _bad(
            f"input {name!r} has parameters.binary_data_size but the request has no "
            f"{HEADER_LENGTH} header; send it with the JSON header's length"
        )
    dtype = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
    need = math.prod(shape) * dtype.itemsize
    if size != need:
        raise _bad(
            f"input {name!r}: binary_data_size is {size} but shape {shape} of {datatype} "
            f"needs {need} bytes"
        )
    if size > len(binary):
        raise _bad(
            f"input {name!r}: binary_data_size is {size} but only {len(binary)} bytes follow "
            "the JSON header"
        )
    # An aligned native copy first (the bytes sit wherever the JSON header ended).
    array = np.frombuffer(binary[:size], dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)
    if not np.isfinite(array).all():
        raise _bad(f"input {name!r} has NaN or infinite values")
    _check_bounds(name, array, spec)
    return array.astype(spec.dtype, copy=False)


def _json_input(name: str, shape: list[int], data: Any, spec: TensorSpec) -> np.ndarray:
    if not isinstance(data, list):
        raise _bad("data must be a JSON array of numbers (flat or nested)")
    flat = _flatten(data, len(shape))
    count = math.prod(shape)
    if len(flat) != count:
        raise _bad(f"input {name!r} has {len(flat)} values; shape {shape} needs {count}")
    if not set(map(type, flat)) <= {int, float}:  # no bools, strings, nulls or objects
        raise _bad(f"input {name!r} data must be numbers only ({spec.datatype})")
    try:
        array = np.asarray(flat, dtype=np.float64)
    except OverflowError:
        raise _bad(f"input {name!r} has a number out of range") from None
    if not np.isfinite(array).all():
        raise _bad(f"input {name!r} has NaN or infinite values")
    _check_bounds(name, array, spec)
    with np.errstate(over="ignore"):
        array = array.astype(spec.dtype).reshape(shape)
    if not np.isfinite(array).all():
        raise _bad(f"input {name!r} has values out of {spec.datatype} range")
    return array


def _check_bounds(name: str, array: np.ndarray, spec: TensorSpec) -> None:
    """An input with a range takes values in it only (whole numbers, if it is integer)."""
    if spec.bounds is None:
        return
    lo, hi = spec.bounds
    outside = (array < lo) | (array > hi)
    if spec.integer:
        outside |= array != np.floor(array)
    if outside.any():
        bad = array.reshape(-1)[outside.reshape(-1)][0].item()
        if spec.integer and float(bad).is_integer():
            bad = int(bad)
        kind = "whole numbers " if spec.integer else ""
        low, high = (int(lo), int(hi)) if spec.integer else (lo, hi)
        raise _bad(f"input {name!r} has value {bad!r}; it takes {kind}from {low} to {high}")


def _parse_outputs(
    outputs: Any, all_binary: bool, known: tuple[str, ...] = OUTPUTS
) -> tuple[tuple[str, ...], frozenset[str]]:
    """(output names, those to answer in binary); `known`: the model's outputs."""
    if outputs is None:
        return known, frozenset(known if all_binary else ())
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise _bad('"outputs" must be a list of objects with a "name"')
    names = tuple(o["name"] for o in outputs)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise _bad(f"unknown output(s) {unknown}; the model has {list(known)}")
    binary = set(names) if all_binary else set()
    for o in outputs:
        params = o.get("parameters", {})
        if not isinstance(params, dict):
            raise _bad(f"output {o['name']!r}: parameters must be an object")
        extra = set(params) - {"binary_data"}
        if extra:
            raise _bad(
                f"output {o['name']!r}: unsupported parameter(s) {sorted(extra)} (this server "
                "supports binary_data; not the classification extension)"
            )
        flag = params.get("binary_data", all_binary)
        if not isinstance(flag, bool):
            raise _bad(f"output {o['name']!r}: binary_data must be true or false")
        if flag:
            binary.add(o["name"])
        else:
            binary.discard(o["name"])
    if not names:
        return known, frozenset(known if all_binary else ())
    return names, frozenset(binary)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


Results = dict[str, np.ndarray]
"""A forward's outputs by name, each [N, ...]: a classifier's {"logits"}, or a model's tensors."""


def _output_tensors(results: Results | np.ndarray) -> dict[str, Any]:
    """name -> () -> (datatype, shape, array): computed only when asked for. A bare array is a
    classifier's logits; from logits come `probabilities` and `predicted_class` too."""
    if isinstance(results, np.ndarray):
        results = {"logits": results}
    tensors: dict[str, Any] = {
        name: functools.partial(_tensor, array) for name, array in results.items()
    }
    logits = results.get("logits")
    if logits is not None and logits.ndim == 2:
        n, classes = logits.shape
        tensors["probabilities"] = lambda: ("FP32", [n, classes], softmax(logits))
        tensors["predicted_class"] = lambda: ("INT64", [n], logits.argmax(axis=1))
    return tensors


def _tensor(array: np.ndarray) -> tuple[str, list[int], np.ndarray]:
    return OIP_DATATYPES[array.dtype.name], list(array.shape), array


def encode_response(
    model_name: str, version: str, request: InferRequest, results: Results | np.ndarray
) -> dict[str, Any]:
    """The infer response (all JSON): the requested outputs, each flattened row-major."""
    doc, _ = _response(model_name, version, request, results, binary=frozenset())
    return doc


def encode_response_body(
    model_name: str, version: str, request: InferRequest, results: Results | np.ndarray
) -> tuple[bytes, int | None]:
    """(response body, JSON header length or None). With binary outputs the body is the JSON
    header then each binary output's bytes (the length goes in `HEADER_LENGTH`)."""
    doc, chunks = _response(model_name, version, request, results, binary=request.binary_outputs)
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_raw_response(
    model_name: str, version: str, request: InferRequest, results: Results | np.ndarray
) -> tuple[dict[str, Any], list[bytes]]:
    """(response header, each requested output's little-endian bytes in order): the gRPC
    API's answer, which carries every output in raw_output_contents."""
    return _response(model_name, version, request, results, binary=frozenset(request.outputs))


def _response(model_name, version, request, results, *, binary) -> tuple[dict, list[bytes]]:
    tensors = _output_tensors(results)
    outputs, chunks = [], []
    for name in request.outputs:
        datatype, shape, array = tensors[name]()
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if name in binary:
            little = np.dtype(NUMPY_DTYPES[datatype]).newbyteorder("<")
            raw = np.ascontiguousarray(array, dtype=little).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        outputs.append(tensor)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    return doc, chunks


def model_metadata(model_name: str, version: str, sig: Signature, extra: dict) -> dict[str, Any]:
    """GET /v2/models/NAME: name, versions, platform, input and output tensors. What their
    name, datatype and shape do not say (an optional input, its default, its range, other
    datatypes it takes, an output's value range) is in `parameters.signature`."""
    parameters = dict(extra)
    if about := sig.describe():
        parameters["signature"] = about
    return {
        "name": model_name,
        "versions": [version],
        "platform": "pytorch",
        "inputs": [t.metadata() for t in sig.inputs],
        "outputs": [t.metadata() for t in sig.outputs],
        "parameters": parameters,
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
