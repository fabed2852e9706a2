"""What a rendered workload takes from its environment rather than from the spec.

A spec says what to run; where it runs (image, namespace, the ServiceAccount that carries the
cloud identity, the ConfigMap with the storage settings) belongs to the cluster. The defaults
name the shared objects `manifests/base` creates and the KubeRay operator's namespace from the
documented install, so an overlay applies without flags.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rayfleet.errors import BadInputError

DEFAULT_SERVICE_ACCOUNT = "rayfleet"
DEFAULT_STORAGE_CONFIG = "rayfleet-storage"
DEFAULT_OPERATOR_NAMESPACE = "kuberay-system"


@dataclass(frozen=True)
class RenderOptions:
    """Cluster-side choices for `rayfleet render` (CLI flags map 1:1 onto these fields)."""

    image: str | None = None
    """Ray image with rayfleet installed; default: the published image for this version
    (the `-gpu` variant when the spec uses GPUs)."""
    namespace: str | None = None
    """metadata.namespace of every object; default: none (kubectl's or kustomize's)."""
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    """ServiceAccount of the Ray pods: annotate it for IRSA / Workload Identity."""
    storage_config: str = DEFAULT_STORAGE_CONFIG
    """ConfigMap whose keys (RAYFLEET_STORAGE, AWS_REGION, AWS_ENDPOINT_URL) become env."""
    credentials_secret: str | None = None
    """An existing Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, when no pod identity."""
    auth_secret: str | None = None
    """An existing Secret with key `auth_token`; default: KubeRay generates one per cluster."""
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    """Namespace of the KubeRay operator, which must reach the dashboard (8265)."""
    ttl_seconds_after_finished: int = 3600
    active_deadline_seconds: int = 86400
    backoff_limit: int = 1
    head_cpu: str = "1"
    head_memory: str = "4Gi"
    worker_memory: str = "4Gi"
    shm_size: str = "1Gi"
    egress_ports: tuple[int, ...] = (443,)
    """TCP ports Ray pods may open to any address (S3, package indexes); DNS is always open."""

    def __post_init__(self) -> None:
        for name in ("ttl_seconds_after_finished", "active_deadline_seconds", "backoff_limit"):
            if getattr(self, name) < 0:
                raise BadInputError(f"{name.replace('_', '-')}: must be >= 0")
        for port in self.egress_ports:
            if not 1 <= port <= 65535:
                raise BadInputError(f"egress port {port} is not a TCP port (1-65535)")

    def changed(self) -> dict[str, object]:
        """The options that differ from the defaults (what the generated header records)."""
        default = RenderOptions()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }
