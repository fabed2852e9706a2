"""A RayJob that runs one rayfleet command on a cluster of its own, and what it needs.

Four objects per job, applied together:

- a ConfigMap with the spec file as written (plus any user module next to it), mounted on
  every Ray pod at SPEC_MOUNT, so the cluster runs the same file `rayfleet run` runs locally;
- the RayJob (K8sJobMode: a submitter Job runs `ray job submit`, the driver runs on the head;
  clean-up by KubeRay 1.7's deletion rules, see `lifecycle`; in a Kueue queue it is created
  suspended with the queue's labels, see `scheduling`);
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
from rayfleet.specs.scheduling import LifecycleSpec, SchedulingSpec

SUBMITTER_CONTAINER = "ray-job-submitter"  # KubeRay's name for it
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


def kueue_labels(scheduling: SchedulingSpec | None) -> dict[str, str]:
    """The labels Kueue reads on a RayJob or RayService (none when the spec names no queue)."""
    if scheduling is None or not scheduling.queue:
        return {}
    out = {QUEUE_LABEL: scheduling.queue}
    if scheduling.priority_class:
        out[PRIORITY_LABEL] = scheduling.priority_class
    return out


def _rule(policy: str, ttl: int, **condition: str) -> dict[str, Any]:
    return {"policy": policy, "condition": {**condition, "ttlSeconds": ttl}}


def lifecycle(
    options: RenderOptions, spec: LifecycleSpec | None, *, queued: bool
) -> dict[str, Any]:
    """Deadline, retries and clean-up of a RayJob; the spec's values win over the flags.

    Not queued: KubeRay 1.7's deletion rules. A succeeded job's cluster goes at once; a failed
    one's stays `keepFailedClusterSeconds` for debugging (`kubectl exec`, the dashboard); the
    RayJob object stays `ttlSecondsAfterFinished` (never before its cluster: KubeRay requires
    DeleteCluster's TTL <= DeleteSelf's). Rules need `shutdownAfterJobFinishes: false` and no
    global TTL (KubeRay refuses the mix). `jobDeploymentStatus: Failed` covers what ends
    without a Ray job status (deadline exceeded, a failed submitter). Rules apply only after
    the last retry: a retried attempt goes through `Retrying`, not a terminal state.

    Queued: Kueue requires `shutdownAfterJobFinishes: true` (a finished job must give its
    quota's pods back) and KubeRay refuses a suspended RayJob without it, so deletion rules
    are impossible there. The cluster goes at once (TTL 0), failed or not: Kueue releases the
    quota when the job finishes, so a kept cluster would hold nodes outside any quota.
    """
    spec = spec or LifecycleSpec()
    backoff = spec.backoff_limit if spec.backoff_limit is not None else options.backoff_limit
    deadline = spec.active_deadline_seconds or options.active_deadline_seconds
    out: dict[str, Any] = {"activeDeadlineSeconds": deadline, "backoffLimit": backoff}
    if queued:
        return out | {
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 0,
        }
    keep = spec.keep_failed_cluster_seconds
    keep = options.keep_failed_cluster_seconds if keep is None else keep
    self_ttl = max(options.ttl_seconds_after_finished, keep)
    rules = [
        _rule("DeleteCluster", 0, jobStatus="SUCCEEDED"),
        _rule("DeleteSelf", options.ttl_seconds_after_finished, jobStatus="SUCCEEDED"),
        _rule("DeleteCluster", keep, jobStatus="FAILED"),
        _rule("DeleteSelf", self_ttl, jobStatus="FAILED"),
        _rule("DeleteCluster", keep, jobDeploymentStatus="Failed"),
        _rule("DeleteSelf", self_ttl, jobDeploymentStatus="Failed"),
    ]
    return out | {"shutdownAfterJobFinishes": False, "deletionStrategy": {"deletionRules": rules}}


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
    scheduling: SchedulingSpec | None = None,
    lifecycle_spec: LifecycleSpec | None = None,
) -> list[dict[str, Any]]:
    """ConfigMap (`layout.spec_config_map`, holding `files`), RayJob, NetworkPolicy, PDB.
    `driver` (the spec's) becomes the entrypoint's reserved CPUs/GPUs when it asks for any;
    `scheduling` with a queue creates the RayJob suspended, for Kueue to admit as one gang."""
    name, kind = layout.name, layout.kind
    queue = kueue_labels(scheduling)
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
            "metadata": {"name": name, "labels": pods.labels(name, "ray-job", kind) | queue},
            "spec": {
                "entrypoint": entrypoint,
                "submissionMode": "K8sJobMode",
                **({"suspend": True} if queue else {}),
                **lifecycle(options, lifecycle_spec, queued=bool(queue)),
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
