"""The GRPCInferenceService RPCs over one replica's InferenceService.

Ray Serve routes each RPC to the ingress replica's method of the same name (ModelInfer, ...;
see `serve.deployment`), with a `grpc_context` that carries the status back. Every refusal
is a status with a one-line message, never an exception: Serve turns an exception into
INTERNAL (or UNKNOWN), which a client cannot tell from a server bug. A bad request is
INVALID_ARGUMENT, an unknown model or version NOT_FOUND, a request over spec.maxRequestBytes
RESOURCE_EXHAUSTED, a missing or wrong token UNAUTHENTICATED: the gRPC names of the REST
API's 400, 404, 413 and 401 (see `convert.GRPC_CODES`).

With a token (spec.auth), every RPC but ServerLive and ServerReady wants the metadata
`authorization: Bearer <token>`, as the REST routes do (tritonclient.grpc: `headers=`).

ModelInfer, and only it (as the REST API's infer route), is counted and timed in the replica's
per-model-version metrics (`serve.metrics`) with protocol `grpc` and the status name as code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from rayfleet.serve.app import OFFLOAD_BYTES, SERVER_NAME, InferenceService
from rayfleet.serve.app import _version as server_version
from rayfleet.serve.auth import TOKEN_ENV, bearer_matches
from rayfleet.serve.grpc import predict_v2_pb2 as pb
from rayfleet.serve.grpc.convert import (
    GRPC_CODES,
    model_infer_response,
    model_metadata_response,
    parse_model_infer,
)
from rayfleet.serve.metrics import GRPC, RequestMetrics, replica_metrics
from rayfleet.serve.protocol import ProtocolError


class GrpcInference:
    """The six RPCs; each takes the request message and Serve's RayServegRPCContext."""

    def __init__(
        self,
        service: InferenceService,
        *,
        token: str | None = None,
        metrics: RequestMetrics | None = None,
    ):
        """`metrics` defaults to the replica's (None outside Ray: nothing is recorded)."""
        self.service = service
        self._token = token.encode() if token else None
        if metrics is None:
            metrics = replica_metrics(service.name, service.model.version)
        self._metrics = metrics

    async def server_live(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request, context) -> pb.ServerReadyResponse:
        # A replica takes traffic only after its model loaded, so reaching here means ready.
        return pb.ServerReadyResponse(ready=True)

    async def server_metadata(self, request, context) -> pb.ServerMetadataResponse:
        async def answer():
            # No extensions: binary_tensor_data is REST's; gRPC carries raw bytes natively.
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version())

        return await self._guarded(context, pb.ServerMetadataResponse, answer)

    async def model_ready(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        async def answer():
            self._check_model(request.name, request.version)
            return pb.ModelReadyResponse(ready=True)

        return await self._guarded(context, pb.ModelReadyResponse, answer)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context):
        async def answer():
            self._check_model(request.name, request.version)
            return model_metadata_response(self.service.metadata())

        return await self._guarded(context, pb.ModelMetadataResponse, answer)

    async def model_infer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        async def answer():
            self._check_model(request.model_name, request.model_version)
            size, limit = request.ByteSize(), self.service.max_request_bytes
            if size > limit:
                raise ProtocolError(413, f"request is {size} bytes; the limit is {limit}")
            sig = self.service.model.signature
            if size > OFFLOAD_BYTES:  # converting many values: off the event loop, as REST
                req = await asyncio.to_thread(parse_model_infer, request, sig)
            else:
                req = parse_model_infer(request, sig)
            results = await self.service.infer(req.inputs)
            name, version = self.service.name, self.service.model.version
            if size > OFFLOAD_BYTES:
                return await asyncio.to_thread(model_infer_response, name, version, req, results)
            return model_infer_response(name, version, req, results)

        if self._metrics is None:
            return await self._guarded(context, pb.ModelInferResponse, answer)
        # An exception escaping here is a bug Serve answers with INTERNAL; a cancelled call
        # (the client gave up or the replica is stopping) is gRPC's CANCELLED.
        started, code = time.perf_counter(), "INTERNAL"
        try:
            response, code = await self._answered(context, answer)
            return pb.ModelInferResponse() if response is None else response
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            self._metrics.observe(GRPC, code, time.perf_counter() - started)

    # ------------------------------------------------------------------------------ helpers

    def _check_model(self, name: str, version: str) -> None:
        service = self.service
        if name != service.name:
            raise ProtocolError(
                404, f"model {name!r} is not served here; this server has {service.name!r}"
            )
        if version and version != service.model.version:
            raise ProtocolError(
                404, f"model {name!r} has no version {version!r}; it has {service.model.version!r}"
            )

    def _check_token(self, context) -> None:
        if self._token is None:
            return
        header = dict(context.invocation_metadata() or ()).get("authorization")
        if not bearer_matches(header, self._token):
            what = "needs a bearer token" if not header else "refused the bearer token sent"
            raise ProtocolError(
                401,
                f"this server {what}: send the metadata authorization: Bearer TOKEN "
                f"(the value of ${TOKEN_ENV})",
            )

    async def _guarded(self, context, empty: type, answer: Callable[[], Awaitable[Any]]):
        """`answer()` after the token check; a ProtocolError becomes its gRPC status and an
        empty message (what Serve sends with a status set on the context)."""
        response, _ = await self._answered(context, answer)
        return empty() if response is None else response

    async def _answered(
        self, context, answer: Callable[[], Awaitable[Any]]
    ) -> tuple[Any | None, str]:
        """(`answer()`, "OK") after the token check, or (None, the status name) for a
        ProtocolError, with that status and its message set on the context."""
        try:
            self._check_token(context)
            return await answer(), "OK"
        except ProtocolError as exc:
            code = GRPC_CODES.get(exc.status, "INVALID_ARGUMENT")
            context.set_code(getattr(grpc.StatusCode, code))
            context.set_details(exc.message)
            return None, code
