"""The KServe v2 gRPC API without Ray: the committed stubs, the conversion to and from the REST
checks, and the RPCs over a real model behind a real grpc.aio server on 127.0.0.1 (the glue
Serve calls, with gRPC's own servicer context in place of Serve's)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from rayfleet.serve.app import InferenceService
from rayfleet.serve.grpc import SERVICER_FUNCTION
from rayfleet.serve.grpc import predict_v2_pb2 as pb
from rayfleet.serve.grpc import predict_v2_pb2_grpc as pb_grpc
from rayfleet.serve.grpc.convert import (
    model_infer_response,
    model_metadata_response,
    parse_model_infer,
)
from rayfleet.serve.grpc.servicer import GrpcInference
from rayfleet.serve.ingress import grpc_options
from rayfleet.serve.loading import load_model
from rayfleet.serve.protocol import (
    ProtocolError,
    encode_response,
    model_metadata,
    parse_infer_request,
)

from .test_serve_loading import write_checkpoint
from .test_serve_protocol import SIG, _body

pytestmark = pytest.mark.unit
GRPC_DIR = Path(__file__).resolve().parents[2] / "platform" / "rayfleet" / "serve" / "grpc"
Input = pb.ModelInferRequest.InferInputTensor
TOKEN = "grpc-unit-token-0123456789abcdef"


def _x(rows: int = 2) -> np.ndarray:
    return np.random.default_rng(rows).random((rows, 1, 8, 8), dtype=np.float32)


def _raw(x: np.ndarray, *, name="input", datatype="FP32", shape=None, **fields):
    tensor = Input(name=name, datatype=datatype, shape=list(shape or x.shape))
    return pb.ModelInferRequest(
        model_name="digits",
        inputs=[tensor],
        raw_input_contents=[x.astype("<f4").tobytes()],
        **fields,
    )


def _typed(x: np.ndarray, **contents) -> pb.ModelInferRequest:
    contents = contents or {"fp32_contents": x.reshape(-1).tolist()}
    tensor = Input(
        name="input",
        datatype="FP32",
        shape=list(x.shape),
        contents=pb.InferTensorContents(**contents),
    )
    return pb.ModelInferRequest(model_name="digits", inputs=[tensor])


# ----------------------------------------------------------------------------- the stubs


def test_committed_stubs_are_what_the_proto_generates(tmp_path):
    """`make grpc-stubs` output equals the committed files: nobody edited one without the other."""
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{GRPC_DIR.parents[2]}",
         f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         str(GRPC_DIR / "predict_v2.proto")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("predict_v2_pb2.py", "predict_v2_pb2_grpc.py"):
        fresh = tmp_path / "rayfleet" / "serve" / "grpc" / name
        assert fresh.read_text() == (GRPC_DIR / name).read_text(), f"{name}: run make grpc-stubs"


def test_stubs_speak_the_kserve_method_paths_stock_clients_call():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    }  # fmt: skip
    request = pb.DESCRIPTOR.message_types_by_name["ModelInferRequest"]
    assert request.fields_by_name["raw_input_contents"].number == 7
    assert grpc_options(9000) == {"port": 9000, "grpc_servicer_functions": [SERVICER_FUNCTION]}
    assert grpc_options(None) is None
    module, _, func = SERVICER_FUNCTION.rpartition(".")
    assert getattr(sys.modules[module], func) is pb_grpc.add_GRPCInferenceServiceServicer_to_server


# ------------------------------------------------------------------------- the conversion


def test_raw_and_typed_contents_parse_to_what_rest_parses():
    x = _x(3)
    rest = parse_infer_request(_body(x), SIG)
    for request in (_raw(x), _typed(x)):
        req = parse_model_infer(request, SIG)
        np.testing.assert_array_equal(req.array, rest.array)
        assert req.outputs == rest.outputs


def test_id_and_requested_outputs_carry_over():
    request = _raw(_x(), id="r-1", outputs=[{"name": "predicted_class"}])
    req = parse_model_infer(request, SIG)
    assert req.id == "r-1" and req.outputs == ("predicted_class",)


BAD = {
    # the REST checks, reached through gRPC
    "wrong input name": _raw(_x(), name="pixels"),
    "wrong datatype": _raw(_x(), datatype="INT32"),
    "no batch dim": _raw(_x(1), shape=[1, 8, 8]),
    "bytes do not fit the shape": _raw(_x(2), shape=[3, 1, 8, 8]),
    "NaN": _raw(np.full((1, 1, 8, 8), np.nan, dtype=np.float32)),
    "unknown output": _raw(_x(), outputs=[{"name": "embedding"}]),
    "no inputs": pb.ModelInferRequest(model_name="digits"),
    # gRPC's own
    "raw and typed": pb.ModelInferRequest(
        model_name="digits",
        inputs=[
            Input(
                name="input",
                datatype="FP32",
                shape=[1, 1, 8, 8],
                contents=pb.InferTensorContents(fp32_contents=[0.5] * 64),
            )
        ],
        raw_input_contents=[b"\0" * 256],
    ),  # fmt: skip
    "two raw for one input": pb.ModelInferRequest(
        model_name="digits",
        inputs=[Input(name="input", datatype="FP32", shape=[1, 1, 8, 8])],
        raw_input_contents=[b"\0" * 256, b"\0" * 256],
    ),
    "typed in the wrong field": _typed(_x(1), fp64_contents=[0.5] * 64),
    "too few typed values": _typed(_x(1), fp32_contents=[0.5] * 63),
    "FP16 typed (no field)": pb.ModelInferRequest(
        model_name="digits",
        inputs=[
            Input(
                name="input",
                datatype="FP16",
                shape=[1, 1, 8, 8],
                contents=pb.InferTensorContents(fp32_contents=[0.5] * 64),
            )
        ],
    ),  # fmt: skip
    "input parameters (shared memory)": pb.ModelInferRequest(
        model_name="digits",
        inputs=[
            Input(
                name="input",
                datatype="FP32",
                shape=[1, 1, 8, 8],
                parameters={"shared_memory_region": pb.InferParameter(string_param="r")},
            )
        ],
    ),  # fmt: skip
    "output parameters (classification)": _raw(
        _x(),
        outputs=[
            {"name": "logits", "parameters": {"classification": pb.InferParameter(int64_param=3)}}
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_requests_are_400_with_a_reason(name):
    with pytest.raises(ProtocolError) as err:
        parse_model_infer(BAD[name], SIG)
    assert err.value.status == 400 and len(err.value.message) > 20


def test_response_carries_every_output_raw_with_the_rest_values():
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    req = parse_model_infer(_raw(_x(2), id="r"), SIG)
    response = model_infer_response("digits", "v1", req, logits)
    rest = encode_response("digits", "v1", req, logits)
    assert (response.model_name, response.model_version, response.id) == ("digits", "v1", "r")
    assert len(response.raw_output_contents) == len(response.outputs) == 3
    for tensor, raw, expected in zip(
        response.outputs, response.raw_output_contents, rest["outputs"], strict=True
    ):
        assert (tensor.name, tensor.datatype, list(tensor.shape)) == (
            expected["name"], expected["datatype"], expected["shape"],
        )  # fmt: skip
        dtype = "<f4" if tensor.datatype == "FP32" else "<i8"
        np.testing.assert_allclose(np.frombuffer(raw, dtype), expected["data"], rtol=1e-6)


def test_metadata_response_has_the_rest_tensors():
    doc = model_metadata("digits", "v1", SIG, {"epoch": 3})
    response = model_metadata_response(doc)
    assert (response.name, list(response.versions), response.platform) == (
        "digits",
        ["v1"],
        "pytorch",
    )
    assert [(t.name, t.datatype, list(t.shape)) for t in response.inputs] == [
        ("input", "FP32", [-1, 1, 8, 8])
    ]
    assert [t.name for t in response.outputs] == ["logits", "probabilities", "predicted_class"]


# ------------------------------------------------------------- the RPCs on a real server


class _Adapter(pb_grpc.GRPCInferenceServiceServicer):
    """Routes each RPC to GrpcInference, as Serve routes it to ModelServer's method."""

    def __init__(self, inference: GrpcInference):
        for rpc, method in (
            ("ServerLive", "server_live"),
            ("ServerReady", "server_ready"),
            ("ServerMetadata", "server_metadata"),
            ("ModelReady", "model_ready"),
            ("ModelMetadata", "model_metadata"),
            ("ModelInfer", "model_infer"),
        ):
            setattr(self, rpc, getattr(inference, method))  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    checkpoint = write_checkpoint(tmp_path_factory.mktemp("m") / "checkpoint_e000003-ab", 3)
    return load_model(str(checkpoint), name="digits")


def _with_server(model, token, calls):
    """Start a grpc.aio server on 127.0.0.1 over the model, run `calls(stub)`, stop it."""
    service = InferenceService(model, max_request_bytes=4096)
    return serving(GrpcInference(service, token=token), calls)


def serving(inference: GrpcInference, calls):
    """Serve `inference` on 127.0.0.1 as Serve routes the RPCs to it, run `calls(stub)`."""

    async def go():
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Adapter(inference), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await calls(pb_grpc.GRPCInferenceServiceStub(channel))
        finally:
            await server.stop(None)

    return asyncio.run(go())


async def _code(call) -> tuple[str, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""


def test_rpcs_answer_like_rest_and_refuse_with_the_right_status(model):
    x = _x(2)
    expected = model.predict(x).argmax(axis=1).tolist()

    async def calls(stub):
        live = await stub.ServerLive(pb.ServerLiveRequest())
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
        ready = await stub.ModelReady(pb.ModelReadyRequest(name="digits", version=model.version))
        answer = await stub.ModelInfer(_raw(x))
        codes = {
            "bad shape": await _code(stub.ModelInfer(BAD["no batch dim"])),
            "typed wrong field": await _code(stub.ModelInfer(BAD["typed in the wrong field"])),
            "unknown model": await _code(stub.ModelReady(pb.ModelReadyRequest(name="nope"))),
            "unknown version": await _code(
                stub.ModelMetadata(pb.ModelMetadataRequest(name="digits", version="v0"))
            ),
            "over the limit": await _code(stub.ModelInfer(_raw(_x(20)))),
        }
        return live, meta, ready, answer, codes

    live, meta, ready, answer, codes = _with_server(model, None, calls)
    assert live.live and ready.ready and meta.versions == [model.version]
    predicted = dict(zip((o.name for o in answer.outputs), answer.raw_output_contents, strict=True))
    assert np.frombuffer(predicted["predicted_class"], "<i8").tolist() == expected
    assert {k: c for k, (c, _) in codes.items()} == {
        "bad shape": "INVALID_ARGUMENT",
        "typed wrong field": "INVALID_ARGUMENT",
        "unknown model": "NOT_FOUND",
        "unknown version": "NOT_FOUND",
        "over the limit": "RESOURCE_EXHAUSTED",
    }
    assert "the model takes [-1, 1, 8, 8]" in codes["bad shape"][1]
    assert "limit is 4096" in codes["over the limit"][1]


def test_with_a_token_only_health_rpcs_are_open(model):
    bearer = (("authorization", f"Bearer {TOKEN}"),)

    async def calls(stub):
        return {
            "live": await _code(stub.ServerLive(pb.ServerLiveRequest())),
            "ready": await _code(stub.ServerReady(pb.ServerReadyRequest())),
            "metadata": await _code(stub.ServerMetadata(pb.ServerMetadataRequest())),
            "infer": await _code(stub.ModelInfer(_raw(_x(1)))),
            "wrong token": await _code(
                stub.ModelInfer(_raw(_x(1)), metadata=(("authorization", "Bearer nope"),))
            ),
            "with token": await _code(stub.ModelInfer(_raw(_x(1)), metadata=bearer)),
        }

    codes = _with_server(model, TOKEN, calls)
    assert {k: c for k, (c, _) in codes.items()} == {
        "live": "OK", "ready": "OK", "metadata": "UNAUTHENTICATED", "infer": "UNAUTHENTICATED",
        "wrong token": "UNAUTHENTICATED", "with token": "OK",
    }  # fmt: skip
    assert "authorization: Bearer" in codes["infer"][1]
    assert TOKEN not in json.dumps(codes)
