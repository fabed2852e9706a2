"""KServe v2 gRPC messages <-> the Open Inference Protocol checks of `serve.protocol`.

One set of rules for both transports: a ModelInferRequest is turned into what the REST API's
binary tensor data extension receives (a JSON header whose inputs carry `binary_data_size`,
then each input's little-endian bytes) and validated by `protocol.parse_infer_request`, so a
request that REST refuses with a 400 is refused here with the same message. What is
gRPC-only is checked here first:

- inputs come either all in `raw_input_contents` (one entry per input, in order; what
  tritonclient.grpc sends) or all in typed `contents` (e.g. `fp32_contents`), never mixed;
- typed contents must use the field of the input's datatype (FP16, BF16 and BYTES have none:
  they travel raw);
- tensor and output parameters are refused (shared memory and classification are not
  served); request-level parameters are ignored, as REST ignores those it does not know.

A model with several inputs (digits-gan: `latent` and the optional `label`) takes them the
same way, one raw_input_contents entry (or one typed contents) per input sent, in order.

Outputs always go back in `raw_output_contents`, as Triton answers, with their datatype and
shape in `outputs`.

Errors are `protocol.ProtocolError`s with an HTTP status; `GRPC_CODES` names the gRPC
status each one becomes (400 -> INVALID_ARGUMENT). Pure: numpy and the generated messages.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from rayfleet.serve.grpc import predict_v2_pb2 as pb
from rayfleet.serve.loading import Signature
from rayfleet.serve.protocol import (
    InferRequest,
    ProtocolError,
    Results,
    encode_raw_response,
    parse_infer_request,
)

# HTTP status of a ProtocolError (or of the servicer's own refusals) -> gRPC status name.
GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
}

# datatype -> (the typed contents field that carries it, its little-endian numpy dtype).
CONTENTS_FIELDS = {
    "BOOL": ("bool_contents", "|b1"),
    "INT8": ("int_contents", "<i1"),
    "INT16": ("int_contents", "<i2"),
    "INT32": ("int_contents", "<i4"),
    "INT64": ("int64_contents", "<i8"),
    "UINT8": ("uint_contents", "<u1"),
    "UINT16": ("uint_contents", "<u2"),
    "UINT32": ("uint_contents", "<u4"),
    "UINT64": ("uint64_contents", "<u8"),
    "FP32": ("fp32_contents", "<f4"),
    "FP64": ("fp64_contents", "<f8"),
}
_ITEMSIZE = {
    **{datatype: np.dtype(dtype).itemsize for datatype, (_, dtype) in CONTENTS_FIELDS.items()},
    "FP16": 2,
    "BF16": 2,
}
_ALL_FIELDS = sorted({f for f, _ in CONTENTS_FIELDS.values()} | {"bytes_contents"})


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def parse_model_infer(request: pb.ModelInferRequest, sig: Signature) -> InferRequest:
    """Validate a ModelInferRequest against the model's signature; ProtocolError if wrong.

    The caller checks model_name/model_version (they pick the model, as the REST path does)."""
    inputs = list(request.inputs)
    raw = list(request.raw_input_contents)
    typed = [t.name for t in inputs if t.HasField("contents")]
    if raw and typed:
        raise _bad(
            f"input(s) {typed} have typed contents but the request also has "
            "raw_input_contents; send every input one way"
        )
    if raw and len(raw) != len(inputs):
        raise _bad(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} input(s); send one "
            "per input, in order"
        )
    header_inputs, chunks = [], []
    for i, tensor in enumerate(inputs):
        if tensor.parameters:
            raise _bad(
                f"input {tensor.name!r}: parameters {sorted(tensor.parameters)} are not "
                "supported (no shared memory); send the values in raw_input_contents"
            )
        data = _raw_bytes(tensor, raw[i]) if raw else _typed_bytes(tensor)
        header_inputs.append(
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": {"binary_data_size": len(data)},
            }
        )
        chunks.append(data)
    outputs = []
    for out in request.outputs:
        if out.parameters:
            raise _bad(
                f"output {out.name!r}: parameters {sorted(out.parameters)} are not supported "
                "(not the classification extension); ask for the output by name only"
            )
        outputs.append({"name": out.name})
    doc: dict[str, Any] = {"inputs": header_inputs}
    if request.id:
        doc["id"] = request.id
    if outputs:
        doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    return parse_infer_request(b"".join([header, *chunks]), sig, json_length=len(header))


def _raw_bytes(tensor: pb.ModelInferRequest.InferInputTensor, data: bytes) -> bytes:
    """A raw input, checked against its own shape and datatype (in gRPC's words; the REST
    checks that follow would name its length binary_data_size)."""
    itemsize = _ITEMSIZE.get(tensor.datatype)
    shape = list(tensor.shape)
    if itemsize is not None and all(d >= 0 for d in shape):
        need = math.prod(shape) * itemsize
        if len(data) != need:
            raise _bad(
                f"input {tensor.name!r}: raw_input_contents has {len(data)} bytes but shape "
                f"{shape} of {tensor.datatype} needs {need}"
            )
    return data


def _typed_bytes(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """A tensor's typed contents as the little-endian bytes raw_input_contents would carry."""
    name, datatype, contents = tensor.name, tensor.datatype, tensor.contents
    field_dtype = CONTENTS_FIELDS.get(datatype)
    if field_dtype is None:
        raise _bad(
            f"input {name!r}: datatype {datatype!r} has no typed contents field; send its "
            "values in raw_input_contents"
        )
    field, dtype = field_dtype
    others = [f for f in _ALL_FIELDS if f != field and len(getattr(contents, f))]
    if others:
        raise _bad(
            f"input {name!r} is {datatype} but has {', '.join(others)}; put its values in "
            f"contents.{field}"
        )
    values = getattr(contents, field)
    expected = math.prod(tensor.shape) if all(d >= 0 for d in tensor.shape) else None
    if expected is not None and len(values) != expected:
        raise _bad(
            f"input {name!r} has {len(values)} values in contents.{field}; shape "
            f"{list(tensor.shape)} needs {expected}"
        )
    try:
        return np.asarray(values, dtype=dtype).tobytes()
    except (OverflowError, ValueError):
        raise _bad(f"input {name!r} has values out of {datatype} range") from None


def model_infer_response(
    model_name: str, version: str, request: InferRequest, results: Results | np.ndarray
) -> pb.ModelInferResponse:
    """The requested outputs, each in raw_output_contents (little-endian, row-major).
    `results`: the forward's outputs by name (a bare array: a classifier's logits)."""
    doc, chunks = encode_raw_response(model_name, version, request, results)
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=version, id=request.id or ""
    )
    for tensor in doc["outputs"]:
        response.outputs.add(
            name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
        )
    response.raw_output_contents.extend(chunks)
    return response


def model_metadata_response(doc: dict[str, Any]) -> pb.ModelMetadataResponse:
    """`protocol.model_metadata`'s document as a ModelMetadataResponse (the KServe message
    has no parameters: recipe, epoch and metrics are REST-only)."""
    response = pb.ModelMetadataResponse(
        name=doc["name"], versions=doc["versions"], platform=doc["platform"]
    )
    for key in ("inputs", "outputs"):
        for tensor in doc[key]:
            getattr(response, key).add(
                name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
            )
    return response
