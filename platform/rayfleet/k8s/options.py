"""What a rendered workload takes from its environment rather than from the spec.

A spec says what to run; where it runs (image, namespace, the ServiceAccount that carries the
cloud identity, the ConfigMap with the storage settings, who may reach Serve or scrape Ray's
metrics) belongs to the cluster. The defaults name the shared objects `manifests/base` creates
and the KubeRay operator's namespace from the documented install, so an overlay applies
without flags.

Each field is declared once, here, with its flag and help (rayfleet.flags): `rayfleet render`
(cli/render_commands.py) and the operator (`python -m rayfleet.k8s.operator`, which takes the
flags that apply to a RayService) build their flags from `FLAGS`, and `to_args` writes the
non-default ones back (the header of a rendered file; the chart's operator Deployment passes
the same names).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from rayfleet.errors import BadInputError
from rayfleet.flags import Flag, check_bounds, flags_of, option, options_from

DEFAULT_SERVICE_ACCOUNT = "rayfleet"
DEFAULT_STORAGE_CONFIG = "rayfleet-storage"
DEFAULT_KUBERAY_NAMESPACE = "kuberay-system"

# What a field shapes. ALL: every Ray cluster, the operator's RayServices too; RAYJOB: only a
# RayJob (the operator makes none); RENDER: only `rayfleet render`'s output (the operator puts
# objects in their ModelDeployment's namespace).
ALL, RAYJOB, RENDER = "all", "rayjob", "render"
_PEER_KEYS = {"podSelector", "namespaceSelector", "ipBlock"}


def _option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    minimum: int | None = None,
    scope: str = ALL,
    metavar: str | None = None,
) -> Any:
    """A RenderOptions field with its command-line flag (rayfleet.flags.option) and `scope`."""
    return option(default, help, flag=flag, minimum=minimum, metavar=metavar, scope=scope)


@dataclass(frozen=True)
class RenderOptions:
    """Cluster-side choices for `rayfleet render` and the operator (see the module doc)."""

    image: str | None = _option(
        None,
        "Ray image with rayfleet installed; default: the published one for this version "
        "(its -gpu variant for GPU pods, unless --gpu-image is set).",
    )
    gpu_image: str | None = _option(
        None, "Image of GPU pods; default: --image, else the published -gpu image."
    )
    image_pull_secrets: tuple[str, ...] = _option(
        (), "Secret for pulling the image on every pod (repeatable).", flag="image-pull-secret"
    )
    namespace: str | None = _option(
        None,
        "metadata.namespace of every object; default: none (kubectl's or kustomize's).",
        scope=RENDER,
    )
    service_account: str = _option(
        DEFAULT_SERVICE_ACCOUNT,
        "ServiceAccount of the Ray pods: annotate it for IRSA / Workload Identity.",
    )
    storage_config: str = _option(
        DEFAULT_STORAGE_CONFIG,
        "ConfigMap whose keys (RAYFLEET_STORAGE, AWS_REGION, AWS_ENDPOINT_URL) every Ray "
        "container gets as env.",
    )
    credentials_secret: str | None = _option(
        None,
        "Existing Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, when the pods have no "
        "cloud identity.",
    )
    auth_secret: str | None = _option(
        None, "Existing Secret with key auth_token (the Ray token); default: KubeRay makes one."
    )
    kuberay_namespace: str = _option(
        DEFAULT_KUBERAY_NAMESPACE,
        "Namespace of the KubeRay operator, which the NetworkPolicy lets reach the dashboard.",
    )
    ttl_seconds_after_finished: int = _option(
        3600,
        "Seconds a finished RayJob object (status, events) is kept; a succeeded job's cluster "
        "goes at once.",
        minimum=0,
        scope=RAYJOB,
        metavar="SECONDS",
    )
    keep_failed_cluster_seconds: int = _option(
        1800,
        "Seconds a failed RayJob's cluster is kept for debugging (spec.lifecycle."
        "keepFailedClusterSeconds wins); not in a Kueue queue.",
        minimum=0,
        scope=RAYJOB,
        metavar="SECONDS",
    )
    active_deadline_seconds: int = _option(
        86400,
        "Seconds a RayJob may run before it is stopped (spec.lifecycle.activeDeadlineSeconds "
        "wins).",
        minimum=1,
        scope=RAYJOB,
        metavar="SECONDS",
    )
    backoff_limit: int = _option(
        1,
        "RayJob retries, each on a new cluster, resuming (spec.lifecycle.backoffLimit wins).",
        minimum=0,
        scope=RAYJOB,
    )
    head_cpu: str = _option("1", "CPU of the Ray head (requests = limits).")
    head_memory: str = _option("4Gi", "Memory of the Ray head.")
    worker_memory: str = _option("4Gi", "Memory of each Ray worker.")
    shm_size: str = _option("1Gi", "/dev/shm size of every Ray pod (the object store).")
    egress_ports: tuple[int, ...] = _option(
        (443,),
        "TCP port Ray pods may open (S3, package indexes; repeatable); DNS is always open.",
        flag="egress-port",
        metavar="PORT",
    )
    egress_cidrs: tuple[str, ...] = _option(
        (), "Where --egress-port traffic may go (repeatable); default: anywhere.",
        flag="egress-cidr",
    )  # fmt: skip
    serve_from: tuple[dict[str, Any], ...] = _option(
        (),
        "A NetworkPolicy peer allowed to Serve (8000), as JSON, e.g. an ingress controller's "
        '{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}} '
        "(repeatable); the cluster's clients always are.",
        metavar="PEER_JSON",
    )
    scrape_from: tuple[dict[str, Any], ...] = _option(
        (),
        "A NetworkPolicy peer allowed to Ray's metrics port (8080) only, as JSON, e.g. the "
        'namespace of your Prometheus {"namespaceSelector": {"matchLabels": '
        '{"kubernetes.io/metadata.name": "monitoring"}}} (repeatable); none: no scraping from '
        "outside the cluster.",
        metavar="PEER_JSON",
    )

    def __post_init__(self) -> None:
        for f in fields(self):  # repeatable flags arrive as lists
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        for name in ("serve_from", "scrape_from"):
            peers = tuple(_peer(p, name) for p in getattr(self, name))
            object.__setattr__(self, name, peers)
        check_bounds(self)
        for port in self.egress_ports:
            if not 1 <= port <= 65535:
                raise BadInputError(f"egress port {port} is not a TCP port (1-65535)")
        for cidr in self.egress_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise BadInputError(
                    f"--egress-cidr {cidr!r}: not a CIDR, e.g. 10.0.0.0/8"
                ) from None

    def changed(self) -> dict[str, Any]:
        """The options that differ from the defaults (what the generated header records)."""
        default = RenderOptions()
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


def _peer(value: Any, field_name: str) -> dict[str, Any]:
    """A NetworkPolicy peer from a dict or its JSON text; errors name the flag of `field_name`."""
    flag = "--" + field_name.replace("_", "-")
    text = value if isinstance(value, str) else None
    if text is not None:
        try:
            value = json.loads(text)
        except ValueError:
            raise BadInputError(
                f"{flag} {text!r}: not JSON; give a NetworkPolicy peer such as "
                '\'{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}\''
            ) from None
    if not isinstance(value, dict) or not value or set(value) - _PEER_KEYS:
        raise BadInputError(
            f"{flag} {json.dumps(value)}: a NetworkPolicy peer has podSelector, "
            "namespaceSelector and/or ipBlock, nothing else"
        )
    return value


# ------------------------------------------------------------------------------- the flags


FLAGS: tuple[Flag, ...] = flags_of(RenderOptions)
OPERATOR_FLAGS: tuple[Flag, ...] = tuple(f for f in FLAGS if f.meta["scope"] == ALL)
"""What shapes a RayService: the operator's flags (no namespace, no RayJob settings)."""


def from_flags(values: Mapping[str, Any]) -> RenderOptions:
    """RenderOptions from parsed flags keyed by field name; a repeatable flag given no value
    (None or empty) keeps its default. BadInputError for a bad value."""
    return options_from(RenderOptions, FLAGS, values)


def to_args(options: RenderOptions) -> list[str]:
    """The flags that reproduce `options` (non-default ones only, in declaration order)."""
    changed = options.changed()
    return [
        arg for flag in FLAGS if flag.field in changed for arg in flag.format(changed[flag.field])
    ]
