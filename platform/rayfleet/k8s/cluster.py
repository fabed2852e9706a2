"""A RayClusterSpec for one workload: a head that runs the driver, fixed-size worker groups.

Shared by every RayJob (and, later, the RayService a ModelDeployment renders to). A job's
cluster is sized from its spec up front, so in-tree autoscaling stays off; the head starts
with `num-cpus: 0` so training work lands on workers only. Token auth is always on, and a
PodDisruptionBudget keeps node drains (and cluster-autoscaler consolidation) from evicting
the head, which would end the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayfleet.k8s import pods
from rayfleet.k8s.options import RenderOptions


@dataclass(frozen=True)
class WorkerGroup:
    """`replicas` pods, each with `cpus` CPUs, `gpus` GPUs (rounded up) and `memory`."""

    name: str
    replicas: int
    cpus: float
    gpus: float = 0
    memory: str = "4Gi"
    min_replicas: int | None = None
    """Fewest pods the workload runs on (an elastic TrainJob's minWorkers); None: replicas."""


@dataclass(frozen=True)
class Layout:
    """Which cluster a workload gets: its name (the CLUSTER_LABEL value), groups and files."""

    name: str
    kind: str
    groups: tuple[WorkerGroup, ...]
    spec_config_map: str | None = None
    spec_files: tuple[str, ...] = ()
    serve: bool = False
    serve_token_secret: str | None = None
    """A Secret whose key `token` the Serve replicas require as a bearer token
    (ModelDeployment `spec.auth.tokenSecretName`), set as RAYFLEET_SERVE_TOKEN."""


def auth_options(options: RenderOptions) -> dict[str, Any]:
    auth: dict[str, Any] = {"mode": "token"}
    if options.auth_secret:
        auth["secretName"] = options.auth_secret
    return auth


def serve_token_env(layout: Layout) -> list[dict[str, Any]]:
    """The Serve token from its Secret (never a literal), on every Ray container: replicas
    may land on the head or any worker."""
    if not layout.serve_token_secret:
        return []
    ref = {"name": layout.serve_token_secret, "key": "token"}
    return [{"name": pods.SERVE_TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}}]


def image_for(options: RenderOptions, gpu: bool) -> str:
    if gpu and options.gpu_image:
        return options.gpu_image
    return options.image or pods.default_image(gpu)


def pod_template(
    layout: Layout,
    options: RenderOptions,
    *,
    component: str,
    container: str,
    res: dict[str, Any],
    gpu: bool,
    head: bool,
) -> dict[str, Any]:
    """A Ray pod: storage env from the shared ConfigMap, the spec files mounted, hardened."""
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": options.storage_config}}]
    if options.credentials_secret:
        env_from.append({"secretRef": {"name": options.credentials_secret}})
    volumes = pods.ray_volumes(options.shm_size)
    mounts = pods.ray_volume_mounts()
    if layout.spec_config_map:
        volumes.append(pods.spec_volume(layout.spec_config_map))
        mounts += pods.spec_mounts(list(layout.spec_files))
    ray_container: dict[str, Any] = {
        "name": container,
        "image": image_for(options, gpu),
        "imagePullPolicy": "IfNotPresent",
        "workingDir": pods.HOME,
        "env": pods.home_env() + serve_token_env(layout),
        "envFrom": env_from,
    }
    if head:
        ray_container["ports"] = pods.container_ports(layout.serve)
    elif layout.serve:
        ray_container["ports"] = [
            {"name": "serve", "containerPort": pods.SERVE_PORT, "protocol": "TCP"}
        ]
    ray_container |= {
        "resources": res,
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {
        "serviceAccountName": options.service_account,
        # No Ray container gets a Kubernetes API token: job drivers and Serve replicas run
        # here, and nothing in a fixed-size cluster calls the API (no autoscaler).
        "automountServiceAccountToken": False,
        "securityContext": pods.pod_security_context(),
        **pods.pull_secrets(options.image_pull_secrets),
        "containers": [ray_container],
        "volumes": volumes,
    }
    if gpu:
        spec["tolerations"] = [dict(pods.GPU_TOLERATION)]
    meta_labels = pods.labels(layout.name, component, layout.kind)
    meta_labels[pods.CLUSTER_LABEL] = layout.name
    return {"metadata": {"labels": meta_labels}, "spec": spec}


def ray_cluster_spec(layout: Layout, options: RenderOptions) -> dict[str, Any]:
    head = {
        "serviceType": "ClusterIP",  # the dashboard stays inside; port-forward to reach it
        "rayStartParams": {"num-cpus": "0"},
        "template": pod_template(
            layout,
            options,
            component="ray-head",
            container="ray-head",
            res=pods.resources(options.head_cpu, options.head_memory),
            gpu=False,
            head=True,
        ),
    }
    workers = [
        {
            "groupName": g.name,
            "replicas": g.replicas,
            "minReplicas": g.replicas if g.min_replicas is None else g.min_replicas,
            "maxReplicas": g.replicas,
            "rayStartParams": {},
            "template": pod_template(
                layout,
                options,
                component="ray-worker",
                container="ray-worker",
                res=pods.resources(pods.cpu_quantity(g.cpus), g.memory, g.gpus),
                gpu=bool(g.gpus),
                head=False,
            ),
        }
        for g in layout.groups
    ]
    return {
        "rayVersion": pods.RAY_VERSION,
        "enableInTreeAutoscaling": False,
        "authOptions": auth_options(options),
        "headGroupSpec": head,
        "workerGroupSpecs": workers,
    }


def head_pdb(layout: Layout) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": f"{layout.name}-head",
            "labels": pods.labels(layout.name, "ray-head", layout.kind),
        },
        "spec": {
            "minAvailable": 1,
            "selector": {
                "matchLabels": {pods.CLUSTER_LABEL: layout.name, "ray.io/node-type": "head"}
            },
        },
    }
