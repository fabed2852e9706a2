"""The Ray Serve side: the replica class, the application builder, and the Serve config.

Deployments go through Serve's declarative config (`import_path` + `args` + per-deployment
overrides), the same document a KubeRay RayService carries in `serveConfigV2`. Two reasons:

- Parity: `application_config(deployment)` is what runs locally and what a cluster runs.
- In-place scaling: Serve hashes `import_path`, `args` and the runtime env into the app's code
  version. Replica counts live in the per-deployment overrides, outside `args`, so changing
  them keeps the code version and Serve adds or drains replicas without restarting the
  others (no reload, no dropped requests). A new checkpoint or batching setting changes
  `args` and rolls the replicas.

`args` carries the spec without its scaling fields and, when the deploying process resolved
it, the pinned checkpoint URI; on a cluster without one, the builder resolves the source (and
pins it, see `loading.pin_checkpoint`).

With `spec.auth`, the replicas read the token from their own environment (RAYFLEET_SERVE_TOKEN,
inherited from the Ray node): never from `args` or a runtime_env in this config, which Serve
shows in its details and `rayfleet render` prints (see `auth`).
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from rayfleet.serve.app import InferenceService, build_app
from rayfleet.serve.auth import server_token
from rayfleet.serve.loading import load_model, pin_checkpoint, resolve_source
from rayfleet.specs.serve import ModelDeployment

DEPLOYMENT = "ModelServer"
IMPORT_PATH = "rayfleet.serve.deployment:application"
_SCALING_FIELDS = ("replicas", "autoscaling")
# Switches that are off by default stay out of `args` while off, so a deployment that does not
# use them keeps its Serve code version across an upgrade (no rolling restart) and rendered
# manifests do not change.
_OFF_BY_DEFAULT = ("exposeSource",)


@serve.deployment(
    name=DEPLOYMENT,
    # A replica that can't load its checkpoint won't load it on the 20th try either.
    max_constructor_retry_count=3,
    graceful_shutdown_wait_loop_s=1.0,
    graceful_shutdown_timeout_s=15.0,
    # Notice a dead replica in seconds, not Serve's default 10 s, and replace it.
    health_check_period_s=2.0,
    health_check_timeout_s=15.0,
)
@serve.ingress()
class ModelServer:
    """One replica: loads the pinned checkpoint (verified, weights only) and serves the OIP app."""

    def __init__(self, settings: dict[str, Any]):
        # Fail closed: with auth on and no usable token, the replica does not start at all.
        token = server_token(f"deployment {settings['model_name']}") if settings["auth"] else None
        model = load_model(
            settings["checkpoint"],
            name=settings["model_name"],
            device="cuda" if settings.get("gpus", 0) > 0 else "cpu",
        )
        self.service = InferenceService(
            model,
            max_batch_size=settings["max_batch_size"],
            batch_wait_timeout_s=settings["batch_wait_timeout_s"],
            max_request_bytes=settings["max_request_bytes"],
            expose_source=settings["expose_source"],
        )
        self._token = token

    def __serve_build_asgi_app__(self):
        return build_app(self.service, token=self._token)


def replica_settings(deployment: ModelDeployment, checkpoint: str) -> dict[str, Any]:
    """What each replica needs: plain data, so it travels in the Serve config."""
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


def application_config(deployment: ModelDeployment, checkpoint: str | None = None) -> dict:
    """The Serve application config (ServeApplicationSchema / a serveConfigV2 entry)."""
    doc = deployment.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key in _SCALING_FIELDS:
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


def application(args: dict[str, Any]):
    """Serve application builder (`import_path`): `{"spec": ModelDeployment doc,
    "checkpoint"?: URI}` -> the bound app. Without a checkpoint the source is resolved here."""
    from rayfleet.errors import SpecError
    from rayfleet.specs import parse_spec

    deployment = parse_spec(args.get("spec"), source="serve application args")
    if not isinstance(deployment, ModelDeployment):
        raise SpecError(
            f"serve application args: expected a ModelDeployment, got {deployment.kind}"
        )
    checkpoint = args.get("checkpoint") or str(resolve_source(deployment).uri)
    if not args.get("checkpoint"):  # resolved here: pin it, as `rayfleet serve` does
        warning = pin_checkpoint(deployment, checkpoint)
        if warning:
            logging.getLogger(__name__).warning(warning)
    return ModelServer.options(**deployment_options(deployment)).bind(
        replica_settings(deployment, checkpoint)
    )
