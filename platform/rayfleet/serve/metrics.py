"""Request metrics per model and version, exported by each replica for Prometheus.

Ray Serve already exports request counts, errors and latency per application, deployment and
replica (`ray_serve_deployment_request_counter_total`, `ray_serve_deployment_error_counter_total`,
`ray_serve_deployment_processing_latency_ms`), and HAProxy's ingress its own frontend/backend
series; none of them says which model version answered. During a rollout two versions serve
side by side, so these add `model` and `model_version` (the checkpoint, as in the responses'
`model_version`; Ray already puts its own release in a `Version` label) and the HTTP status
`code`:

    ray_rayfleet_requests_total{model, model_version, code}
    ray_rayfleet_request_seconds_bucket{model, model_version, le}   (+ _sum, _count)

(Ray prefixes application metrics with `ray_` and exports them on each node's metrics export
port, which Prometheus scrapes; see the chart's `metrics` values.) Only inference requests
count: health probes and metadata would drown the latency of the one route that matters.

Created only inside a Ray worker (a Serve replica); the same app under plain uvicorn (the
benchmark's baseline) records nothing and never imports Ray.
"""

from __future__ import annotations

import sys

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUESTS = "rayfleet_requests"
LATENCY = "rayfleet_request_seconds"


class RequestMetrics:
    """A replica's request counter and latency histogram, tagged with its model and version."""

    def __init__(self, model: str, version: str):
        from ray.util.metrics import Counter, Histogram

        self._tags = {"model": model, "model_version": version}
        self._requests = Counter(
            REQUESTS,
            description="Inference requests answered, by model, version and HTTP status code.",
            tag_keys=("model", "model_version", "code"),
        )
        self._latency = Histogram(
            LATENCY,
            description="Inference request latency in the replica (seconds), by model and version.",
            boundaries=list(LATENCY_BUCKETS_S),
            tag_keys=("model", "model_version"),
        )

    def observe(self, status_code: int, seconds: float) -> None:
        self._requests.inc(1, tags={**self._tags, "code": str(status_code)})
        self._latency.observe(seconds, tags=self._tags)


def replica_metrics(model: str, version: str) -> RequestMetrics | None:
    """Metrics for a replica serving `model` at `version`; None outside a connected Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return RequestMetrics(model, version)
