"""The pieces every Ray pod shares: image, labels, security contexts, volumes, templates.

The canonical definition: `rayfleet render` and the operator build their pods from these, and
the Helm chart's RayCluster (the one Ray object Go templates still write) is checked against
them: tests/k8s/test_chart.py derives the expected security contexts, ports, volumes, mounts
and HOME of every chart Ray pod from this module, so the chart can't drift from it.
"""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from rayfleet.serve.auth import TOKEN_ENV

RAY_VERSION = "2.60.0"
PYTHON_TAG = "py311"
IMAGE_REPOSITORY = "ghcr.io/rayfleet/rayfleet"

# The official Ray images run as user `ray` (uid 1000) in group `users` (gid 100).
RUN_AS_USER = 1000
RUN_AS_GROUP = 100

# Ray's control-plane ports on the head: GCS, dashboard + Jobs API, Ray Client.
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
SERVE_PORT = 8000
# The metrics export port KubeRay gives every Ray node (container port `metrics`): Prometheus
# scrapes it (the chart's PodMonitor), and the NetworkPolicy opens it to `scrape_from` peers.
KUBERAY_METRICS_PORT = 8080
# What Serve replicas read their bearer token from (set from the spec's token Secret).
SERVE_TOKEN_ENV = TOKEN_ENV

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

# Ray pods of one cluster carry CLUSTER_LABEL=<cluster>; pods allowed to submit work to it
# (RayJob submitters, helm test pods) carry CLIENT_LABEL=<cluster>. NetworkPolicies and the
# head PodDisruptionBudget select on these, never on KubeRay's generated names.
CLUSTER_LABEL = "rayfleet.io/cluster"
CLIENT_LABEL = "rayfleet.io/client-of"
KIND_LABEL = "rayfleet.io/kind"

SPEC_MOUNT = "/etc/rayfleet/job"
RAY_TMP = "/tmp/ray"
# Every container runs with a read-only root filesystem; these are where Ray writes. /tmp/ray:
# sessions, logs, sockets, runtime_env working dirs and pip envs. /tmp: Python's tempfile and
# whatever libraries put there. HOME: ~/.cache (pip, torch hub, Hugging Face), ~/.config,
# ~/ray_results, rayfleet's local store. The rayproject/ray image keeps Python itself under
# /home/ray (anaconda3), so an emptyDir on /home/ray would hide it: HOME is a folder below it,
# and the Ray container starts there (workingDir), so a driver's relative paths are writable.
TMP = "/tmp"
HOME = "/home/ray/work"


def rayfleet_version() -> str:
    try:
        return version("rayfleet")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"


def default_image(gpu: bool) -> str:
    """The published image for this rayfleet version: rayproject/ray + rayfleet on top."""
    suffix = "-gpu" if gpu else ""
    return f"{IMAGE_REPOSITORY}:{rayfleet_version()}-{PYTHON_TAG}{suffix}"


def labels(instance: str, component: str, kind: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "rayfleet",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "rayfleet",
    }
    if kind:
        out[KIND_LABEL] = kind
    return out


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": RUN_AS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Restricted Pod Security Standard, per container (KubeRay copies it to its init container;
    the autoscaler sidecar gets it through `autoscalerOptions.securityContext`)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
        "readOnlyRootFilesystem": True,
    }


def pull_secrets(names: tuple[str, ...]) -> dict[str, Any]:
    """`imagePullSecrets` for a pod spec (nothing when there are none)."""
    return {"imagePullSecrets": [{"name": n} for n in names]} if names else {}


def cpu_quantity(cpus: float) -> str:
    """1 -> "1", 0.5 -> "500m", 2.25 -> "2250m"."""
    if float(cpus).is_integer():
        return str(int(cpus))
    return f"{round(cpus * 1000)}m"


def resources(cpu: str, memory: str, gpus: float = 0) -> dict[str, Any]:
    """Requests equal to limits: Ray sizes itself from the limits, and a guaranteed pod is not
    the first evicted under memory pressure."""
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits[GPU_RESOURCE] = str(math.ceil(gpus))
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def ray_volumes(shm_size: str) -> list[dict[str, Any]]:
    """Ray's logs/spill directory, a bigger /dev/shm (the object store; NCCL on GPUs), and the
    writable /tmp and HOME a read-only root filesystem needs."""
    return [
        {"name": "ray-tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        *scratch_volumes(),
    ]


def ray_volume_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "ray-tmp", "mountPath": RAY_TMP},
        {"name": "shm", "mountPath": "/dev/shm"},
        *scratch_mounts(),
    ]


def scratch_volumes() -> list[dict[str, Any]]:
    """/tmp and HOME for a container with a read-only root filesystem."""
    return [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]


def scratch_mounts() -> list[dict[str, Any]]:
    return [{"name": "tmp", "mountPath": TMP}, {"name": "home", "mountPath": HOME}]


def home_env() -> list[dict[str, Any]]:
    return [{"name": "HOME", "value": HOME}]


def spec_volume(config_map: str) -> dict[str, Any]:
    return {"name": "job", "configMap": {"name": config_map}}


def spec_mounts(files: list[str]) -> list[dict[str, Any]]:
    """One subPath mount per file: plain files at SPEC_MOUNT, not ConfigMap symlinks, so the
    spec's resolved folder (which `rayfleet run` puts on sys.path) is the same on every pod."""
    return [
        {"name": "job", "mountPath": f"{SPEC_MOUNT}/{name}", "subPath": name, "readOnly": True}
        for name in files
    ]


def container_ports(serve: bool) -> list[dict[str, Any]]:
    ports = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in RAY_PORTS.items()]
    if serve:
        ports.append({"name": "serve", "containerPort": SERVE_PORT, "protocol": "TCP"})
    return ports
