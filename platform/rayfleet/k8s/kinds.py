"""One renderer per spec kind: `RENDERERS[kind](spec_file, options) -> objects`.

A new kind is one function here plus its entry in RENDERERS.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from rayfleet.errors import SpecError
from rayfleet.k8s import pods
from rayfleet.k8s.cluster import Layout, WorkerGroup, head_pdb, ray_cluster_spec
from rayfleet.k8s.network import network_policy
from rayfleet.k8s.options import RenderOptions
from rayfleet.k8s.pods import SPEC_MOUNT
from rayfleet.k8s.rayjob import kueue_labels, namespaced, ray_job
from rayfleet.k8s.source import SpecFile
from rayfleet.serve.config import serve_config_text
from rayfleet.serve.ingress import container_env
from rayfleet.specs import ModelDeployment, SweepJob, TrainJob
from rayfleet.specs.base import MAX_NAME, NAME_RE
from rayfleet.tune.space import prepare

# The one metadata.name rule (specs.base): a DNS-1035 label of at most 47 characters, since
# KubeRay names a RayJob's RayCluster `<rayjob>-<5 chars>` within its 53-character limit.
# Specs already enforce it; render checks again for objects built in code.
MAX_RAYJOB_NAME = MAX_NAME

Renderer = Callable[[SpecFile, RenderOptions], list[dict[str, Any]]]


def check_name(src: SpecFile, limit: int, what: str) -> str:
    name = src.spec.metadata.name
    if len(name) > limit or not NAME_RE.fullmatch(name):
        raise SpecError(
            f"{src.path}: metadata.name {name!r} can't name a {what}: KubeRay needs at most "
            f"{limit} characters starting with a letter; rename it or use --set metadata.name=..."
        )
    return name


def entrypoint(command: str, src: SpecFile, *flags: str) -> str:
    """`rayfleet <command> <mounted spec> --set ...`: the same file and overrides as locally."""
    args = ["rayfleet", command, f"{SPEC_MOUNT}/{src.file_name}", *flags]
    args += [f"--set={item}" for item in src.overrides]
    return shlex.join(args)


def _training_job(
    src: SpecFile,
    options: RenderOptions,
    train: TrainJob,
    *,
    command: str,
    copies: int,
    flags: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """A RayJob running `rayfleet <command>` on `copies` concurrent copies of a TrainJob's
    worker group (one pod per DDP worker, sized from its `spec.scaling`)."""
    name = check_name(src, MAX_RAYJOB_NAME, "RayJob")
    scaling = train.spec.scaling
    group = WorkerGroup(
        name="gpu" if scaling.gpus else "cpu",
        replicas=scaling.num_workers * copies,
        min_replicas=scaling.fewest_workers * copies,  # elastic: minWorkers..numWorkers
        cpus=scaling.cpus_per_worker,
        gpus=scaling.gpus,
        memory=options.worker_memory,
    )
    layout = Layout(
        name=name,
        kind=src.spec.kind,
        groups=(group,),
        spec_config_map=f"{name}-job",
        spec_files=tuple(src.files),
    )
    return ray_job(
        layout,
        entrypoint=entrypoint(command, src, *flags),
        files=src.files,
        options=options,
        driver=src.spec.spec.driver,
        scheduling=src.spec.spec.scheduling,
        lifecycle_spec=src.spec.spec.lifecycle,
    )


def render_train_job(src: SpecFile, options: RenderOptions) -> list[dict[str, Any]]:
    """TrainJob -> RayJob: one worker pod per DDP worker."""
    assert isinstance(src.spec, TrainJob)
    return _training_job(src, options, src.spec, command="run", copies=1)


def render_sweep_job(src: SpecFile, options: RenderOptions) -> list[dict[str, Any]]:
    """SweepJob -> RayJob running `rayfleet sweep`, with room for `maxConcurrentTrials`
    trials at once (one when unset: the cluster then runs trials one after another)."""
    sweep = src.spec
    assert isinstance(sweep, SweepJob)
    base = prepare(sweep, source_dir=src.path.resolve().parent).base
    copies = sweep.spec.max_concurrent_trials or 1
    # A retried RayJob runs the same entrypoint again: it continues the sweep's trials.json
    # when an earlier attempt left one, instead of failing with "already exists".
    return _training_job(
        src, options, base, command="sweep", copies=copies, flags=("--resume-if-exists",)
    )


def render_model_deployment(src: SpecFile, options: RenderOptions) -> list[dict[str, Any]]:
    """ModelDeployment -> RayService, NetworkPolicy, head PDB. `serveConfigV2` is the Serve
    config `rayfleet serve` deploys locally (rayfleet.serve.config: the spec travels in its
    `args`, the source is resolved by the replicas from storage), so a replica change is an
    in-place Serve update; workers are sized for the most replicas the spec can ask for.
    This is also what the operator creates for a ModelDeployment object (reconcile)."""
    deployment = src.spec
    assert isinstance(deployment, ModelDeployment)
    name = check_name(src, MAX_RAYJOB_NAME, "RayService")
    spec = deployment.spec
    most = spec.autoscaling.max_replicas if spec.autoscaling else (deployment.num_replicas or 1)
    group = WorkerGroup(
        name="gpu" if spec.gpus_per_replica else "cpu",
        replicas=most,
        cpus=max(spec.cpus_per_replica, 1),
        gpus=spec.gpus_per_replica,
        memory=options.worker_memory,
    )
    layout = Layout(
        name=name,
        kind=deployment.kind,
        groups=(group,),
        serve=True,
        serve_token_secret=spec.auth.token_secret_name if spec.auth else None,
    )
    cluster = ray_cluster_spec(layout, options)
    _add_ray_env(cluster, container_env(spec.ingress))
    if spec.grpc_port is not None:
        _add_grpc_port(src, cluster, spec.grpc_port)
    if spec.gcs_fault_tolerance is not None:
        cluster["gcsFaultToleranceOptions"] = spec.gcs_fault_tolerance.kuberay_options()
    service = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": name,
            "labels": pods.labels(name, "ray-service", deployment.kind)
            | kueue_labels(spec.scheduling),
        },
        "spec": {
            "serveConfigV2": serve_config_text(deployment),
            "rayClusterConfig": cluster,
        },
    }
    policy = network_policy(
        name=name,
        cluster=name,
        metadata_labels=pods.labels(name, "network-policy", deployment.kind),
        options=options,
        serve=True,
        redis_port=spec.gcs_fault_tolerance.redis_port() if spec.gcs_fault_tolerance else None,
        grpc_port=spec.grpc_port,
    )
    return namespaced([service, policy, head_pdb(layout)], options)


def _add_ray_env(cluster: dict[str, Any], env: list[dict[str, Any]]) -> None:
    """Append `env` to the Ray container (the first) of the head and every worker group: Serve
    reads its ingress switch at import on every node (rayfleet.serve.ingress)."""
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        group["template"]["spec"]["containers"][0]["env"].extend(env)


def _add_grpc_port(src: SpecFile, cluster: dict[str, Any], port: int) -> None:
    """Serve's gRPC port (spec.grpcPort) on the Ray container of every node that runs a Serve
    ingress, next to its HTTP port. KubeRay's `<name>-head-svc` carries every head container
    port, so that Service is the gRPC address (its serve-svc keeps only the port `serve`)."""
    taken = {*pods.RAY_PORTS.values(), pods.SERVE_PORT, pods.KUBERAY_METRICS_PORT}
    if port in taken:
        raise SpecError(
            f"{src.path}: spec.grpcPort {port} is a port Ray or Serve already uses on the pods "
            f"({', '.join(map(str, sorted(taken)))}); pick another, e.g. 9000"
        )
    entry = {"name": "grpc", "containerPort": port, "protocol": "TCP"}
    for group in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]:
        group["template"]["spec"]["containers"][0].setdefault("ports", []).append(dict(entry))


RENDERERS: dict[str, Renderer] = {
    "TrainJob": render_train_job,
    "SweepJob": render_sweep_job,
    "ModelDeployment": render_model_deployment,
}
