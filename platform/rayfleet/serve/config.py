"""The Serve application config of a ModelDeployment: built here, and only here.

Every way a model is deployed goes through Serve's declarative config (`import_path` + `args`
+ per-deployment overrides):

- `rayfleet serve` hands it to the local Serve controller (serve/runtime.py);
- `rayfleet render` and the operator put it in a KubeRay RayService's `serveConfigV2`
  (k8s/kinds.py), and the Helm chart serves through the operator;
- on every replica, `rayfleet.serve.deployment:application` (IMPORT_PATH) turns `args` back
  into a ModelDeployment and binds the replica class with `deployment_options`.

Pure data, no runtime imports (no Ray, FastAPI or torch): rendering and the operator build
this document without loading what serves it (tests/k8s/test_pure_imports.py).

Why the config and not a bound app: in-place scaling. Serve hashes `import_path`, `args` and
the runtime env into the application's code version. Replica counts live in the
per-deployment overrides, outside `args`, so changing them keeps the code version and Serve
adds or drains replicas without restarting the others (no reload, no dropped requests). A new
checkpoint or batching setting changes `args` and rolls the replicas: with `max_surge_percent`
(ROLLOUT_SURGE_PERCENT) Serve starts the new version's replicas next to the old ones and stops
an old replica only once a new one runs (its constructor loaded and verified the checkpoint),
so capacity never drops below the target and a checkpoint that fails to load leaves the old
replicas serving. Serve's default (0) stops
old replicas first, which drops capacity and, on a bad checkpoint, the replicas it stopped.

`args` carries the spec without its scaling fields and, when the deploying process resolved
it, the pinned checkpoint URI; on a cluster without one, the builder resolves the source (and
pins it, see `loading.pin_checkpoint`). With `spec.auth`, the replicas read the token from
their own environment (RAYFLEET_SERVE_TOKEN, inherited from the Ray node): never from `args`
or a runtime_env in this config, which Serve shows in its details and `rayfleet render`
prints (see `auth`).
"""

from __future__ import annotations

from typing import Any

import yaml

from rayfleet.serve.ingress import grpc_options
from rayfleet.specs.serve import ModelDeployment

DEPLOYMENT = "ModelServer"
"""The one Serve deployment of every rayfleet application (the replica class's name)."""
IMPORT_PATH = "rayfleet.serve.deployment:application"
"""The application builder each replica imports (the runtime side of this config)."""

ROLLOUT_SURGE_PERCENT = 100
"""Extra replicas Serve may start during a rollout, in percent of the target: all the new ones
first, so the old version keeps full capacity until the new one is up (where the cluster has
room; otherwise Serve starts what fits and waits, old replicas still serving)."""

_SCALING_FIELDS = ("replicas", "autoscaling")
# Switches that are off by default stay out of `args` while off, so a deployment that does not
# use them keeps its Serve code version across an upgrade (no rolling restart) and rendered
# manifests do not change.
_OFF_BY_DEFAULT = ("exposeSource",)
# Node-level settings: they act through the Ray nodes' environment (see `ingress`), not on a
# replica, so they stay out of `args` (changing one must not roll replicas for nothing).
_NODE_FIELDS = ("ingress", "grpcPort")


def replica_settings(deployment: ModelDeployment, checkpoint: str) -> dict[str, Any]:
    """What each replica's constructor takes: plain data, so it travels in the Serve config."""
    spec = deployment.spec
    return {
        "model_name": deployment.model_name,
        "checkpoint": checkpoint,
        "max_batch_size": spec.batching.max_batch_size,
        "batch_wait_timeout_s": spec.batching.batch_wait_timeout_s,
        "max_request_bytes": spec.max_request_bytes,
        "gpus": spec.gpus_per_replica,
        "auth": spec.auth is not None,  # whether to check; the token itself is not in here
        "expose_source": spec.expose_source,
    }


def deployment_options(deployment: ModelDeployment, *, scaling: bool = True) -> dict[str, Any]:
    """Serve deployment options from the spec (the keys of Serve's DeploymentSchema)."""
    spec = deployment.spec
    options: dict[str, Any] = {
        "max_ongoing_requests": spec.ongoing_limit,
        "ray_actor_options": {"num_cpus": spec.cpus_per_replica, "num_gpus": spec.gpus_per_replica},
        "max_surge_percent": ROLLOUT_SURGE_PERCENT,
    }
    if scaling and spec.autoscaling is not None:
        a = spec.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "initial_replicas": max(a.min_replicas, 1),
            "target_ongoing_requests": a.target_ongoing_requests,
        }
    elif scaling and spec.replicas is not None:
        options["num_replicas"] = spec.replicas
    return options


def application_config(
    deployment: ModelDeployment, checkpoint: str | None = None
) -> dict[str, Any]:
    """One application: a ServeApplicationSchema document (an entry of `applications`)."""
    doc = deployment.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key in _SCALING_FIELDS + _NODE_FIELDS:
        doc["spec"].pop(key, None)
    for key in _OFF_BY_DEFAULT:
        if doc["spec"].get(key) is False:
            del doc["spec"][key]
    args: dict[str, Any] = {"spec": doc}
    if checkpoint is not None:
        args["checkpoint"] = checkpoint
    overrides = deployment_options(deployment)
    overrides.setdefault("num_replicas", deployment.num_replicas or 1)
    if "autoscaling_config" in overrides:
        overrides.pop("num_replicas")
    return {
        "name": deployment.name,
        "route_prefix": deployment.spec.route_prefix,
        "import_path": IMPORT_PATH,
        "args": args,
        "deployments": [{"name": DEPLOYMENT, **overrides}],
    }


def serve_config(deployment: ModelDeployment, checkpoint: str | None = None) -> dict[str, Any]:
    """The whole Serve config for one ModelDeployment (what `serve deploy` reads); with
    spec.grpcPort, Serve's gRPC ingress options (applied when Serve starts, see `ingress`)."""
    doc: dict[str, Any] = {"applications": [application_config(deployment, checkpoint)]}
    if deployment.spec.grpc_port is not None:
        doc["grpc_options"] = grpc_options(deployment.spec.grpc_port)
    return doc


def serve_config_text(deployment: ModelDeployment) -> str:
    """`serve_config` as YAML text: a RayService's `serveConfigV2`. No checkpoint: on a
    cluster the replicas resolve and pin the source themselves."""
    return yaml.safe_dump(serve_config(deployment), sort_keys=False)
