"""Request metrics per model and version, exported by each replica for Prometheus.

Ray Serve already exports request counts, errors and latency per application, deployment and
replica (`ray_serve_deployment_request_counter_total`, `ray_serve_deployment_error_counter_total`,
`ray_serve_deployment_processing_latency_ms`), and HAProxy's ingress its own frontend/backend
series; none of them says which model version answered. During a rollout two versions serve
side by side, so these add `model` and `model_version` (the checkpoint, as in the responses'
`model_version`; Ray already puts its own release in a `Version` label), the `protocol` that
carried the request and its outcome `code`:

    ray_rayfleet_requests_total{model, model_version, protocol, code}
    ray_rayfleet_request_seconds_bucket{model, model_version, protocol, le}   (+ _sum, _count)

`protocol` is `http` (the REST API) or `grpc` (the KServe v2 gRPC API, spec.grpcPort), and
`code` speaks that protocol's own vocabulary, so that it reads like the client's logs: the HTTP
status number for `http` ("200", "400", "413", "500") and the gRPC status name for `grpc`
("OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL"). Errors of both are therefore
`code!~"2..|OK"`; the label `protocol` keeps the two apart when a query needs only one, and
their latencies apart (gRPC skips JSON altogether).

(Ray prefixes application metrics with `ray_` and exports them on each node's metrics export
port, which Prometheus scrapes; see the chart's `metrics` values.) Only inference requests
count, over either protocol: health probes and metadata would drown the latency of the one
route that matters.

Created only inside a Ray worker (a Serve replica); the same app under plain uvicorn (the
benchmark's baseline) records nothing and never imports Ray.
"""

from __future__ import annotations

import functools
import sys

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUESTS = "rayfleet_requests"
LATENCY = "rayfleet_request_seconds"
HTTP = "http"
GRPC = "grpc"
PROTOCOLS = (HTTP, GRPC)


class RequestMetrics:
    """A replica's request counter and latency histogram, tagged with its model and version."""

    def __init__(self, model: str, version: str):
        from ray.util.metrics import Counter, Histogram

        self._tags = {"model": model, "model_version": version}
        self._requests = Counter(
            REQUESTS,
            description=(
                "Inference requests answered, by model, version, protocol and code "
                "(HTTP status number for http, gRPC status name for grpc)."
            ),
            tag_keys=("model", "model_version", "protocol", "code"),
        )
        self._latency = Histogram(
            LATENCY,
            description=(
                "Inference request latency in the replica (seconds), by model, version and "
                "protocol."
            ),
            boundaries=list(LATENCY_BUCKETS_S),
            tag_keys=("model", "model_version", "protocol"),
        )

    def observe(self, protocol: str, code: int | str, seconds: float) -> None:
        """One answered inference request: `code` is an HTTP status for `http`, a gRPC status
        name for `grpc` (see the module docstring)."""
        if protocol not in PROTOCOLS:  # a typo here would split every dashboard silently
            raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
        tags = {**self._tags, "protocol": protocol}
        self._requests.inc(1, tags={**tags, "code": str(code)})
        self._latency.observe(seconds, tags=tags)


def replica_metrics(model: str, version: str) -> RequestMetrics | None:
    """Metrics for a replica serving `model` at `version`; None outside a connected Ray.

    One object per process and version: the REST app and the gRPC servicer of a replica
    share it rather than register the same Ray metric twice."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return _metrics(model, version)


@functools.cache
def _metrics(model: str, version: str) -> RequestMetrics:
    return RequestMetrics(model, version)
