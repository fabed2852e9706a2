"""`kind: ModelDeployment`: a trained checkpoint served on Ray Serve (Open Inference Protocol).

The source is a checkpoint URI, a run name (its newest verified checkpoint) or a sweep name
(the checkpoint its `best.json` names). `spec.replicas` sits at the top of `spec` so the
custom resource's `scale` subresource (`.spec.replicas`) and `rayfleet serve --replicas`
change the same field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayfleet.specs.base import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    NameStr,
    Resource,
    SpecModel,
    UriStr,
    resolve_storage,
)
from rayfleet.specs.faulttolerance import GcsFaultToleranceSpec
from rayfleet.specs.scheduling import SchedulingSpec
from rayfleet.storage.uri import StorageURI

DEFAULT_MAX_REQUEST_BYTES = 1 << 20


class SourceSpec(SpecModel):
    """Where the model comes from: exactly one of checkpoint, run or sweep."""

    checkpoint: UriStr | None = Field(
        default=None, description="A checkpoint folder URI (it must have a verified manifest)."
    )
    run: NameStr | None = Field(
        default=None, description="A run name: its newest verified checkpoint is served."
    )
    sweep: NameStr | None = Field(
        default=None, description="A sweep name: the checkpoint its best.json names is served."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        given = [k for k in ("checkpoint", "run", "sweep") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of checkpoint, run or sweep"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("checkpoint", "run", "sweep") if getattr(self, k) is not None)

    @property
    def value(self) -> str:
        return getattr(self, self.kind)

    def describe(self) -> str:
        return f"{self.kind} {self.value}"


class AutoscalingSpec(SpecModel):
    """Ray Serve autoscaling on ongoing requests per replica."""

    min_replicas: int = Field(default=1, ge=0, description="0 scales to zero when idle.")
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(
        default=2.0, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) is above maxReplicas ({self.max_replicas})"
            )
        return self


class BatchingSpec(SpecModel):
    """Dynamic batching (`@serve.batch`): requests wait up to the timeout to share a forward."""

    max_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Requests per forward pass; 1 turns batching off."
    )
    batch_wait_timeout_s: float = Field(
        default=0.005, ge=0, le=10, description="Longest a request waits for a batch to fill."
    )

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


# A Kubernetes Secret name (DNS-1123 subdomain).
_SECRET_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ServeAuth(SpecModel):
    """Bearer-token check on the inference API, for clusters without an authenticating ingress.

    The spec names a Secret, never the token: a spec is printed, rendered and stored in
    places a token must not be. The replicas read the token from RAYFLEET_SERVE_TOKEN, which
    the RayService sets from this Secret's key `token` (locally: `rayfleet serve` with
    RAYFLEET_SERVE_TOKEN set or --serve-token-file)."""

    token_secret_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=_SECRET_NAME,
        description="Kubernetes Secret (same namespace) whose key `token` holds the token.",
    )


class ModelDeploymentSpec(SpecModel):
    model_name: NameStr | None = Field(
        default=None,
        description="The name clients use (/v2/models/NAME); default metadata.name.",
    )
    source: SourceSpec
    storage: UriStr | None = Field(
        default=None,
        description=f"Where runs and sweeps live; default ${STORAGE_ENV} or {DEFAULT_STORAGE}",
    )
    replicas: int | None = Field(
        default=None, ge=1, description="Fixed replica count (default 1); not with autoscaling."
    )
    autoscaling: AutoscalingSpec | None = None
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    cpus_per_replica: float = Field(default=1, ge=0)
    gpus_per_replica: float = Field(default=0, ge=0)
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        ge=1024,
        le=256 << 20,
        description="Larger request bodies are refused with 413.",
    )
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="Requests a replica takes at once; default 2 x maxBatchSize, at least 32.",
    )
    route_prefix: str = Field(
        default="/", description="HTTP path the API is mounted at (the /v2 paths sit below)."
    )
    auth: ServeAuth | None = Field(
        default=None,
        description="Require `Authorization: Bearer <token>` on every /v2 route but the health "
        "probes. Without it Serve's port is unauthenticated: keep it inside the cluster or "
        "behind an authenticating ingress.",
    )
    gcs_fault_tolerance: GcsFaultToleranceSpec | None = Field(
        default=None,
        description="Keep the cluster's state (and Serve's applications) across a head "
        "restart: KubeRay's GCS fault tolerance on an external Redis or, alpha, on a volume.",
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec,
        description="Kueue queue and priority of the rendered RayService (Kueue's RayService "
        "integration admits its cluster).",
    )
    ingress: Literal["haproxy", "serve-proxy"] = Field(
        default="haproxy",
        description="HTTP ingress in front of the replicas: Ray's bundled HAProxy (fast, the "
        "default) or Serve's Python proxy (serve-proxy). Set on the Ray nodes before Ray "
        "starts, so it holds for every application of one Ray instance.",
    )
    grpc_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Also serve the KServe v2 gRPC API (inference.GRPCInferenceService, e.g. "
        "tritonclient.grpc) on this port; off when unset. Like ingress, a setting of the Ray "
        "instance's Serve, fixed when Serve starts.",
    )
    expose_source: bool = Field(
        default=False,
        description="Publish the checkpoint's storage URI in model metadata "
        "(GET /v2/models/NAME, parameters.checkpoint); off by default.",
    )

    @field_validator("route_prefix")
    @classmethod
    def _route(cls, value: str) -> str:
        if not value.startswith("/") or (len(value) > 1 and value.endswith("/")):
            raise ValueError(f"{value!r} must start with '/' and not end with one, e.g. /digits")
        return value

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> ModelDeploymentSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set replicas or autoscaling, not both")
        return self

    @property
    def ongoing_limit(self) -> int:
        """Serve's max_ongoing_requests. Requests a full replica can't take wait in Serve's
        router, which re-polls with backoff up to 0.5 s; a replica computes one forward at a
        time, so letting it queue the requests itself keeps it busy. Measured on 2 cores, 32
        clients, a 5 ms model, no batching: Serve's default (5) gave 8 req/s at 3.5 s p50;
        32 gave 82-87 req/s at 0.36 s p50 (two alternating rounds)."""
        if self.max_ongoing_requests is not None:
            return self.max_ongoing_requests
        return max(32, 2 * self.batching.max_batch_size)


class ModelDeployment(Resource):
    """A trained model served over HTTP (Open Inference Protocol) by Ray Serve."""

    kind: Literal["ModelDeployment"]
    spec: ModelDeploymentSpec

    @property
    def model_name(self) -> str:
        return self.spec.model_name or self.metadata.name

    @property
    def num_replicas(self) -> int | None:
        """The fixed replica count, or None under autoscaling."""
        if self.spec.autoscaling is not None:
            return None
        return self.spec.replicas or 1

    def storage_uri(self) -> StorageURI:
        return resolve_storage(self.spec.storage)

    def with_replicas(self, replicas: int) -> ModelDeployment:
        """A copy with a fixed replica count (what `--replicas` and the scale subresource do)."""
        spec = self.spec.model_copy(update={"replicas": replicas})
        return self.model_copy(update={"spec": spec})
