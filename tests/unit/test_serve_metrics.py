"""The per-model-version request metrics over both protocols, without Ray: the REST app under
httpx's ASGI transport and the gRPC servicer behind a real grpc.aio server on 127.0.0.1 record
into the real `RequestMetrics` (Ray's Counter and Histogram, whose tag checks run; outside a
Ray worker they export nowhere), which notes each observation for the test to read."""

from __future__ import annotations

import asyncio
import sys

import httpx
import numpy as np
import pytest

from rayfleet.serve import app as serve_app
from rayfleet.serve import metrics
from rayfleet.serve.app import InferenceService, build_app
from rayfleet.serve.grpc import predict_v2_pb2 as pb
from rayfleet.serve.grpc.servicer import GrpcInference

from .test_serve_grpc import BAD, TOKEN, _code, _raw, _x, serving
from .test_serve_grpc import model as model  # noqa: F401  (the module-scoped fixture)
from .test_serve_protocol import _body

pytestmark = pytest.mark.unit


class Recorded(metrics.RequestMetrics):
    """The real metrics, noting (protocol, code) of each observation and its latency."""

    def __init__(self, model: str, version: str):
        super().__init__(model, version)
        self.seen: list[tuple[str, str]] = []
        self.seconds: list[float] = []

    def observe(self, protocol: str, code: int | str, seconds: float) -> None:
        super().observe(protocol, code, seconds)
        self.seen.append((protocol, str(code)))
        self.seconds.append(seconds)


def _service(model) -> InferenceService:
    return InferenceService(model, max_request_bytes=4096)


def _unknown_model() -> pb.ModelInferRequest:
    request = _raw(_x(1))
    request.model_name = "nope"
    return request


def test_grpc_model_infer_is_counted_by_status_name_and_nothing_else_is(model):
    recorded = Recorded("digits", model.version)
    bearer = (("authorization", f"Bearer {TOKEN}"),)

    async def calls(stub):
        await stub.ServerLive(pb.ServerLiveRequest())
        await stub.ServerReady(pb.ServerReadyRequest())
        await stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=bearer)
        await stub.ModelReady(pb.ModelReadyRequest(name="digits"), metadata=bearer)
        await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), metadata=bearer)
        assert recorded.seen == []  # health and metadata are not inference
        return [
            await _code(stub.ModelInfer(_raw(_x(2)), metadata=bearer)),
            await _code(stub.ModelInfer(BAD["no batch dim"], metadata=bearer)),
            await _code(stub.ModelInfer(_unknown_model(), metadata=bearer)),
            await _code(stub.ModelInfer(_raw(_x(20)), metadata=bearer)),
            await _code(stub.ModelInfer(_raw(_x(1)))),
        ]

    codes = serving(GrpcInference(_service(model), token=TOKEN, metrics=recorded), calls)
    expected = ["OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"]
    assert [c for c, _ in codes] == expected  # what the client saw is what was counted
    assert recorded.seen == [("grpc", code) for code in expected]
    assert all(0 < s < 30 for s in recorded.seconds)


def test_a_grpc_inference_that_fails_unexpectedly_counts_as_internal(model, monkeypatch):
    """Serve answers an exception escaping a replica with INTERNAL: the count says the same."""
    recorded = Recorded("digits", model.version)
    service = _service(model)

    async def broken(array):
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(service, "infer", broken)

    async def calls(stub):
        return await _code(stub.ModelInfer(_raw(_x(1))))

    code, _ = serving(GrpcInference(service, metrics=recorded), calls)
    assert code == "UNKNOWN"  # plain grpc.aio's answer to an exception; Serve's is INTERNAL
    assert recorded.seen == [("grpc", "INTERNAL")]


def test_a_grpc_inference_the_client_gave_up_on_counts_as_cancelled(model, monkeypatch):
    recorded = Recorded("digits", model.version)
    service = _service(model)

    async def stuck(array):
        await asyncio.Event().wait()

    monkeypatch.setattr(service, "infer", stuck)

    async def calls(stub):
        return await _code(stub.ModelInfer(_raw(_x(1)), timeout=0.5))

    code, _ = serving(GrpcInference(service, metrics=recorded), calls)
    assert code == "DEADLINE_EXCEEDED"
    assert recorded.seen == [("grpc", "CANCELLED")]


def test_http_infer_is_counted_by_status_number(model, monkeypatch):
    recorded = Recorded("digits", model.version)
    monkeypatch.setattr(serve_app, "replica_metrics", lambda name, version: recorded)
    service = InferenceService(model, max_request_bytes=64 * 1024)

    async def go():
        transport = httpx.ASGITransport(app=build_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.get("/v2/health/ready")
            await client.get("/v2/models/digits")
            ok = await client.post("/v2/models/digits/infer", content=_body(_x(2)))
            bad = await client.post("/v2/models/digits/infer", content=b"{")
            return ok.status_code, bad.status_code

    assert asyncio.run(go()) == (200, 400)
    assert recorded.seen == [("http", "200"), ("http", "400")]


def test_protocol_is_one_of_two_so_dashboards_never_split_on_a_typo():
    recorded = Recorded("digits", "v1")
    with pytest.raises(ValueError, match="protocol 'gRPC' is not one of http, grpc"):
        recorded.observe("gRPC", "OK", 0.01)
    assert recorded.seen == []


def test_rest_and_grpc_of_a_replica_share_one_metrics_object(monkeypatch):
    """Inside Ray both protocols record into one object (Ray's metric registered once);
    outside it (plain uvicorn, the unit tests) into none."""
    import ray

    with monkeypatch.context() as m:
        m.setattr(ray, "is_initialized", lambda: True)
        first = metrics.replica_metrics("digits", "v-shared")
        assert first is metrics.replica_metrics("digits", "v-shared") is not None
        assert metrics.replica_metrics("digits", "v-other") is not first
    with monkeypatch.context() as m:
        m.setattr(ray, "is_initialized", lambda: False)
        assert metrics.replica_metrics("digits", "v-shared") is None
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "ray")
        assert metrics.replica_metrics("digits", "v-shared") is None


def test_grpc_without_metrics_records_nothing_and_still_answers(model, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    inference = GrpcInference(_service(model))
    assert inference._metrics is None

    async def calls(stub):
        return await stub.ModelInfer(_raw(_x(1)))

    answer = serving(inference, calls)
    assert answer.model_version == model.version
    assert np.frombuffer(answer.raw_output_contents[2], "<i8").shape == (1,)
