"""A RayJob that runs one rayfleet command on a cluster of its own, and what it needs.

Four objects per job, applied together:

- a ConfigMap with the spec file as written (plus any user module next to it), mounted on
  every Ray pod at SPEC_MOUNT, so the cluster runs the same file `rayfleet run` runs locally;
- the RayJob (K8sJobMode: a submitter Job runs `ray job submit`, the driver runs on the head;
  the cluster goes away after the job, the RayJob after `ttlSecondsAfterFinished`);
- the NetworkPolicy for its pods, with the submitter admitted as a client;
- a PodDisruptionBudget for its head (as the chart has).

Sweeps will reuse `ray_job` with another entrypoint and layout.
"""

from __future__ import annotations

from typing import Any

from rayfleet.k8s import pods
from rayfleet.k8s.cluster import Layout, head_pdb, image_for, ray_cluster_spec
from rayfleet.k8s.network import network_policy
from rayfleet.k8s.options import RenderOptions
from rayfleet.specs.base import DriverSpec

SUBMITTER_CONTAINER = "ray-job-submitter"  # KubeRay's name for it


def submitter_template(layout: Layout, options: RenderOptions) -> dict[str, Any]:
    """The submitter pod: KubeRay fills in the `ray job submit` command and the token env."""
    meta_labels = pods.labels(layout.name, "submitter", layout.kind)
    meta_labels[pods.CLIENT_LABEL] = layout.name
    return {
        "metadata": {"labels": meta_labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": pods.pod_security_context(),
            **pods.pull_secrets(options.image_pull_secrets),
            "containers": [
                {
                    "name": SUBMITTER_CONTAINER,
                    "image": image_for(options, gpu=False),
                    "imagePullPolicy": "IfNotPresent",
                    "env": pods.home_env(),
                    "resources": pods.resources("500m", "1Gi"),
                    "securityContext": pods.container_security_context(),
                    "volumeMounts": pods.scratch_mounts(),
                }
            ],
            "volumes": pods.scratch_volumes(),
        },
    }


def _driver_resources(driver: DriverSpec | None) -> dict[str, float]:
    if driver is None:
        return {}
    asked = {"entrypointNumCpus": driver.cpus, "entrypointNumGpus": driver.gpus}
    return {key: value for key, value in asked.items() if value}


def ray_job(
    layout: Layout,
    *,
    entrypoint: str,
    files: dict[str, str],
    options: RenderOptions,
    driver: DriverSpec | None = None,
) -> list[dict[str, Any]]:
    """ConfigMap (`layout.spec_config_map`, holding `files`), RayJob, NetworkPolicy, PDB.
    `driver` (the spec's) becomes the entrypoint's reserved CPUs/GPUs when it asks for any."""
    name, kind = layout.name, layout.kind
    objects: list[dict[str, Any]] = []
    if layout.spec_config_map:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": layout.spec_config_map,
                    "labels": pods.labels(name, "job-spec", kind),
                },
                "data": dict(files),
            }
        )
    objects.append(
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": name, "labels": pods.labels(name, "ray-job", kind)},
            "spec": {
                "entrypoint": entrypoint,
                "submissionMode": "K8sJobMode",
                "shutdownAfterJobFinishes": True,
                "ttlSecondsAfterFinished": options.ttl_seconds_after_finished,
                "activeDeadlineSeconds": options.active_deadline_seconds,
                "backoffLimit": options.backoff_limit,
                "rayClusterSpec": ray_cluster_spec(layout, options),
                "submitterPodTemplate": submitter_template(layout, options),
                **_driver_resources(driver),
            },
        }
    )
    objects.append(
        network_policy(
            name=name,
            cluster=name,
            metadata_labels=pods.labels(name, "network-policy", kind),
            options=options,
            serve=layout.serve,
        )
    )
    objects.append(head_pdb(layout))
    return namespaced(objects, options)


def namespaced(objects: list[dict[str, Any]], options: RenderOptions) -> list[dict[str, Any]]:
    """Put every object in `options.namespace` (when set), right after its name."""
    if options.namespace:
        for obj in objects:
            obj["metadata"] = {"name": obj["metadata"]["name"], "namespace": options.namespace} | {
                k: v for k, v in obj["metadata"].items() if k != "name"
            }
    return objects
