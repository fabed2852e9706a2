"""Walk rendered objects: every Ray cluster spec, pod template and container in them.

Security checks must see every container KubeRay will run, wherever it hides: head and
worker templates, RayJob submitters, helm test pods, and the autoscaler sidecar KubeRay
builds from `autoscalerOptions`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

RAY_KINDS = ("RayCluster", "RayJob", "RayService")


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def cluster_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """RayClusterSpecs in a Ray object (RayCluster.spec, RayJob.spec.rayClusterSpec, ...)."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "RayCluster":
        yield spec
    elif kind == "RayJob" and "rayClusterSpec" in spec:
        yield spec["rayClusterSpec"]
    elif kind == "RayService":
        yield spec["rayClusterConfig"]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, {metadata, spec}) for every pod an object creates, Pods included."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] == "Pod":
        yield name, obj
    for cluster in cluster_specs(obj):
        yield f"{name} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name} group {group['groupName']}", group["template"]
    if obj["kind"] == "RayJob" and "submitterPodTemplate" in obj["spec"]:
        yield f"{name} submitter", obj["spec"]["submitterPodTemplate"]


def containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod_spec.get(key, [])


def all_container_contexts(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict, dict]]:
    """(where, pod securityContext, container securityContext) for every container, with the
    autoscaler sidecar's context taken from `autoscalerOptions` (KubeRay copies it over)."""
    for obj in objects:
        for where, template in pod_templates(obj):
            pod_ctx = template["spec"].get("securityContext", {})
            for c in containers(template["spec"]):
                yield f"{where} container {c['name']}", pod_ctx, c.get("securityContext", {})
        for cluster in cluster_specs(obj):
            if cluster.get("enableInTreeAutoscaling"):
                head_ctx = cluster["headGroupSpec"]["template"]["spec"].get("securityContext", {})
                auto = cluster.get("autoscalerOptions", {}).get("securityContext", {})
                yield f"{obj['kind']}/{obj['metadata']['name']} autoscaler", head_ctx, auto


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]
