"""The HTTP API: a FastAPI app speaking the Open Inference Protocol over an InferenceService.

The same `build_app(service)` runs inside each Ray Serve replica (see `deployment`) and, for
the benchmark's baseline, under plain uvicorn: the two differ only by Ray Serve.

Errors are the app's own, always JSON `{"error": ...}` with a 4xx status: bodies are read and
parsed here (not by FastAPI's validation), so malformed JSON is a 400, an oversized body a 413
(checked from Content-Length and again while streaming), an unknown model or path a 404, a
wrong method a 405. No input reaches a 5xx: inputs are validated before the model runs, and
non-finite values, which JSON can't carry back, are refused.

A body over OFFLOAD_BYTES is decoded and validated in a worker thread (and its response
encoded there): parsing 1 MiB of JSON numbers takes tens of milliseconds of CPU, and on the
event loop that would stall every other request and the health probes for as long. Under
the GIL the loop still waits while the C JSON decoder runs, but it gets turns during the
rest (flattening, type checks, conversion). Small bodies are parsed inline, which is cheaper
than a thread hand-off. A binary-tensor body (Triton's extension, see `protocol`) has only
its JSON header parsed, so it stays inline however large its tensors are.

With a token (`spec.auth`, see `auth`), every /v2 route except the health probes wants
`Authorization: Bearer <token>`; others get 401 with `WWW-Authenticate: Bearer`.

Inside a Serve replica, every infer request is counted and timed per model and version, for
Prometheus (see `metrics`; the 401s of the bearer check happen before the route and are left
to Serve's own error counter).

Model metadata names the checkpoint folder (the model version) but not where it is stored:
its URI would tell any client the bucket and layout of the team's storage. `expose_source`
(spec.exposeSource) opts in.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayfleet.serve.auth import TOKEN_ENV, bearer_matches
from rayfleet.serve.batching import AdaptiveBatcher, Tensors, concat_rows, split_rows
from rayfleet.serve.loading import LoadedModel
from rayfleet.serve.metrics import HTTP, replica_metrics
from rayfleet.serve.protocol import (
    BINARY_EXTENSION,
    HEADER_LENGTH,
    ProtocolError,
    encode_response_body,
    header_length,
    model_metadata,
    parse_infer_request,
)

log = logging.getLogger(__name__)
SERVER_NAME = "rayfleet"
OFFLOAD_BYTES = 64 * 1024  # bodies larger than this are parsed (and answered) off the loop
OFFLOAD_VALUES = 8192  # answers with more output values than this are encoded off the loop


def _json(doc: Any, status: int = 200) -> Response:
    body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status_code=status, media_type="application/json")


def error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class InferenceService:
    """One loaded model plus its dynamic batching; what every route calls.

    With `max_batch_size > 1`, concurrent requests are grouped by an `AdaptiveBatcher` (see
    `batching`: a lone request is dispatched at once; under load, batches of up to that many
    requests, waiting at most `batch_wait_timeout_s` for one to fill) and run as one forward
    pass (every input concatenated along N: a generator's latents and labels alike); each
    request's rows of every output are split back out. Requests are validated (and their
    optional inputs filled in) before they join a batch, so a bad request never fails the
    requests batched with it.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        max_batch_size: int = 1,
        batch_wait_timeout_s: float = 0.0,
        max_request_bytes: int = 1 << 20,
        expose_source: bool = False,
    ):
        self.model = model
        self.max_request_bytes = max_request_bytes
        self.expose_source = expose_source
        self.max_batch_size = max_batch_size
        self.batches: list[int] = []  # recent batch sizes (requests), for tests and stats
        self._batcher = None
        if max_batch_size > 1:
            self._batcher = AdaptiveBatcher(
                self._forward_batch, max_batch_size=max_batch_size, wait_s=batch_wait_timeout_s
            )

    @property
    def name(self) -> str:
        return self.model.name

    def _forward_batch(self, items: list[Tensors | np.ndarray]) -> list[Tensors | np.ndarray]:
        """One forward for several requests: each input joined along N, each output split
        back per request (`batching`). A bare array is a request's main input (a
        classifier's only one) and gets its logits back."""
        self._note_batch(len(items))
        inputs = [self._inputs(x) for x in items]
        if len(inputs) == 1:
            outs = [self.model.run(inputs[0])]
        else:
            joined, sizes = concat_rows(inputs)
            outs = split_rows(self.model.run(joined), sizes)
        return [
            out["logits"] if isinstance(x, np.ndarray) else out
            for x, out in zip(items, outs, strict=True)
        ]

    def _inputs(self, x: Tensors | np.ndarray) -> Tensors:
        return {self.model.signature.input_name: x} if isinstance(x, np.ndarray) else x

    def _note_batch(self, size: int) -> None:
        self.batches.append(size)
        if len(self.batches) > 4096:
            del self.batches[:2048]

    async def infer(self, inputs: Tensors | np.ndarray) -> Tensors | np.ndarray:
        """The model's outputs for one request's inputs (every input of the signature by
        name, or a bare array: the main input, answered with its logits)."""
        if self._batcher is not None:
            return await self._batcher.submit(inputs)
        return self._forward_batch([inputs])[0]

    def metadata(self) -> dict[str, Any]:
        meta = self.model.meta
        extra = {
            "recipe": meta.get("recipe"),
            "epoch": meta.get("epoch"),
            "metrics": meta.get("metrics", {}),
            "max_batch_size": self.max_batch_size,
        }
        if self.expose_source:
            extra["checkpoint"] = self.model.uri
        return model_metadata(self.model.name, self.model.version, self.model.signature, extra)


def _bearer_check(token: str | None):
    """A route dependency that refuses requests without the bearer token (none: no check)."""
    expected = token.encode() if token else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization")
        if not bearer_matches(header, expected):
            challenge = "Bearer" if not header else 'Bearer error="invalid_token"'
            what = "needs a bearer token" if not header else "refused the bearer token sent"
            raise StarletteHTTPException(
                401,
                f"this server {what}: send Authorization: Bearer TOKEN (rayfleet predict "
                f"reads --serve-token-file or ${TOKEN_ENV})",
                headers={"WWW-Authenticate": challenge},
            )

    return Depends(check)


def build_app(service: InferenceService, *, token: str | None = None) -> FastAPI:
    """The OIP routes over `service`; docs are off (the protocol is the documentation).

    With `token`, every route but the health probes requires it (see `auth`)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    limit = service.max_request_bytes
    authed = [_bearer_check(token)] if token else []

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        messages = {404: "no such path; see /v2 and /v2/models/NAME", 405: "method not allowed"}
        message = exc.detail if exc.status_code not in messages else messages[exc.status_code]
        response = error(exc.status_code, str(message))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error(400, f"invalid request: {exc.errors()[:1]}")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> Response:
        # A server bug, not a bad input: JSON like every other error, so clients can tell it
        # from a proxy's 500 (a replica that died mid-request, which is worth retrying).
        log.exception("inference failed")
        return error(500, f"internal error: {type(exc).__name__}")

    def _model_or_404(name: str, version: str | None) -> Response | None:
        if name != service.name:
            return error(
                404, f"model {name!r} is not served here; this server has {service.name!r}"
            )
        if version is not None and version != service.model.version:
            return error(
                404, f"model {name!r} has no version {version!r}; it has {service.model.version!r}"
            )
        return None

    @app.get("/v2", dependencies=authed)
    async def server_metadata() -> Response:
        doc = {"name": SERVER_NAME, "version": _version(), "extensions": [BINARY_EXTENSION]}
        return _json(doc)

    @app.get("/v2/health/live")
    async def live() -> Response:
        """Open even with auth on: kubelet and load-balancer probes send no credentials, and
        a probe that needed the token would put it in every pod spec and probe log. Liveness
        and readiness say nothing about the model or the data."""
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        """Open even with auth on, for the same reason as `live`."""
        # A replica takes traffic only after its model loaded, so reaching here means ready.
        return _json({"ready": True})

    @app.get("/v2/models/{name}", dependencies=authed)
    @app.get("/v2/models/{name}/versions/{version}", dependencies=authed)
    async def metadata(name: str, version: str | None = None) -> Response:
        return _model_or_404(name, version) or _json(service.metadata())

    @app.get("/v2/models/{name}/ready", dependencies=authed)
    @app.get("/v2/models/{name}/versions/{version}/ready", dependencies=authed)
    async def model_ready(name: str, version: str | None = None) -> Response:
        return _model_or_404(name, version) or _json({"name": name, "ready": True})

    metrics = replica_metrics(service.name, service.model.version)

    @app.post("/v2/models/{name}/infer", dependencies=authed)
    @app.post("/v2/models/{name}/versions/{version}/infer", dependencies=authed)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        if metrics is None:
            return await _infer(name, request, version)
        started, code = time.perf_counter(), 500  # an exception here becomes _bug's 500
        try:
            response = await _infer(name, request, version)
            code = response.status_code
            return response
        finally:
            metrics.observe(HTTP, code, time.perf_counter() - started)

    async def _infer(name: str, request: Request, version: str | None) -> Response:
        if (missing := _model_or_404(name, version)) is not None:
            return missing
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return error(400, "Content-Length is not a number")
            if int(declared) > limit:
                return error(413, f"request body is {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return error(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        sig = service.model.signature
        try:
            json_length = header_length(request.headers.get(HEADER_LENGTH), size)
            # Binary tensors skip JSON number parsing: only a large JSON part goes to a thread.
            large = (size if json_length is None else json_length) > OFFLOAD_BYTES
            parse = functools.partial(parse_infer_request, body, sig, json_length=json_length)
            req = await asyncio.to_thread(parse) if large else parse()
        except ProtocolError as exc:
            return error(exc.status, exc.message)
        del body, chunks
        results = await service.infer(req.inputs)
        name, version = service.name, service.model.version
        values = sum(a.size for a in results.values())
        if large or values > OFFLOAD_VALUES:  # many rows (binary input too): a big answer
            return await asyncio.to_thread(_answer, name, version, req, results)
        return _answer(name, version, req, results)

    return app


def _answer(name: str, version: str, req, results: Tensors) -> Response:
    body, json_length = encode_response_body(name, version, req, results)
    if json_length is None:
        return Response(body, media_type="application/json")
    headers = {HEADER_LENGTH: str(json_length)}
    return Response(body, media_type="application/octet-stream", headers=headers)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rayfleet")
    except PackageNotFoundError:
        return "0"
