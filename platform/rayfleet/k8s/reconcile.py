"""What the operator does, as pure functions: ModelDeployment object -> owned objects, the
patches that bring a live RayService to them, and the ModelDeployment's status.

The desired objects are exactly what `rayfleet render` writes for the same spec (RayService,
NetworkPolicy, head PodDisruptionBudget), plus a namespace, an owner reference (deleting the
ModelDeployment deletes them through Kubernetes' garbage collector) and an owner label.

Patches follow what KubeRay does with a RayService edit:

- `serveConfigV2` changed -> KubeRay re-submits it to Serve on the running cluster. Replica
  counts live there (in `deployments[].num_replicas`, outside the app's `args`), so a replica
  change is an in-place Serve update: the patch carries only the new string, in which only
  that `num_replicas` line differs.
- `rayClusterConfig` changed in anything but worker-group `replicas`/`minReplicas`/
  `maxReplicas` -> KubeRay builds a new cluster and moves traffic (a zero-downtime upgrade).
  KubeRay hashes the spec with exactly those fields muted (utils.
  GenerateHashWithoutReplicasAndWorkersToDelete) and ignores edits that only touch them, so
  the comparison here mutes them too and a replica change never patches `rayClusterConfig`.

A changed model source (another run, sweep or checkpoint URI) changes the application's `args`
in `serveConfigV2`, so it is the first kind of patch: Serve rolls the replicas in place,
starting the new version's replicas (which load and verify the checkpoint) before old ones
drain (`serve.config.ROLLOUT_SURGE_PERCENT`). The status follows it (`rollout`): InProgress
until Serve runs the new source healthy, then Complete; Failed when the new replicas can't
start, while the old ones keep serving (the spec stays the desired state: fix or revert it).

Comparisons ask "does the live object already hold every desired value" rather than
equality, so fields the API server or KubeRay default in never cause a patch loop.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from rayfleet import usage
from rayfleet.k8s import crd, pods
from rayfleet.k8s.kinds import render_model_deployment
from rayfleet.k8s.options import RenderOptions
from rayfleet.k8s.serveconfig import ServeConfigError, targets
from rayfleet.k8s.source import SpecFile
from rayfleet.serve.config import DEPLOYMENT
from rayfleet.specs import ModelDeployment, parse_spec

OWNER_LABEL = "rayfleet.io/model-deployment"
MANAGED_BY = "rayfleet-operator"
SERVE_CONFIG = "serveConfigV2"
CLUSTER_CONFIG = "rayClusterConfig"
_MUTED_GROUP_FIELDS = ("replicas", "minReplicas", "maxReplicas", "scaleStrategy")

# Serve deployment states (ray.serve DeploymentStatus) that mean "replicas are changing".
_MOVING = {"UPSCALING": "Upscaling", "DOWNSCALING": "Downscaling", "UPDATING": "Updating"}


def ref(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind', 'object')} {ns + '/' if ns else ''}{meta.get('name', '?')}"


# ----------------------------------------------------------------------- desired objects


def parse(obj: dict[str, Any]) -> ModelDeployment:
    """The typed spec of a ModelDeployment object; SpecError (one line) when it is invalid.

    Only `metadata.name` is carried over: the API server's fields (uid, resourceVersion) are
    not part of the spec, and labels are Kubernetes bookkeeping that must not reach the Serve
    application's `args` (a label edit would otherwise roll every replica).

    The CRD defaults `spec.replicas` to 1 (for the scale subresource), so the API server
    stores `replicas: 1` next to `autoscaling` too; its CEL rule allows exactly that, and it
    is dropped here rather than read as a second scaling mode."""
    spec = obj.get("spec")
    if isinstance(spec, dict) and spec.get("autoscaling") is not None:
        if spec.get("replicas") == crd.REPLICAS_DEFAULT:
            spec = {k: v for k, v in spec.items() if k != "replicas"}
    doc = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {"name": (obj.get("metadata") or {}).get("name")},
        "spec": spec,
    }
    return parse_spec(doc, source=ref(obj))


def owner_reference(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_owned_by(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    uid = owner["metadata"].get("uid")
    return any(r.get("uid") == uid for r in child["metadata"].get("ownerReferences") or [])


def owned_by_predecessor(child: dict[str, Any], owner: dict[str, Any]) -> bool:
    """`child` is controlled by an earlier ModelDeployment of `owner`'s name (another UID):
    one deleted and re-created before the garbage collector removed its children. Only one
    object of a name exists at a time, so that owner is gone; the child is adopted."""
    return owner_of(child) == owner["metadata"]["name"] and not is_owned_by(child, owner)


def owner_of(child: dict[str, Any]) -> str | None:
    """The name of the ModelDeployment controlling `child`, if one does."""
    for r in child.get("metadata", {}).get("ownerReferences") or []:
        if r.get("kind") == crd.KIND and r.get("apiVersion", "").startswith(crd.GROUP + "/"):
            return r.get("name")
    return None


def worker_selector(name: str) -> str:
    """The pods Serve replicas run on (what HPA averages pod metrics over)."""
    return f"{pods.CLUSTER_LABEL}={name},ray.io/node-type=worker"


def desired_objects(obj: dict[str, Any], options: RenderOptions | None = None) -> list[dict]:
    """RayService, NetworkPolicy, PodDisruptionBudget for a ModelDeployment object: what
    `rayfleet render` writes for the same spec, namespaced, owned and labelled."""
    deployment = parse(obj)
    meta = obj["metadata"]
    src = SpecFile(path=Path(ref(obj)), spec=deployment, overrides=(), files={})
    objects = render_model_deployment(src, options or RenderOptions())
    owner = owner_reference(obj)
    for child in objects:
        child["metadata"] = {
            "name": child["metadata"]["name"],
            "namespace": meta.get("namespace"),
            "labels": {
                **child["metadata"].get("labels", {}),
                OWNER_LABEL: meta["name"],
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": [owner],
        }
        if child["metadata"]["namespace"] is None:
            del child["metadata"]["namespace"]
    return objects


def desired_ray_service(obj: dict[str, Any], options: RenderOptions | None = None) -> dict:
    return next(o for o in desired_objects(obj, options) if o["kind"] == "RayService")


def serve_config(ray_service: dict[str, Any]) -> dict[str, Any]:
    """The Serve config a RayService carries, as the dict KubeRay PUTs to
    `/api/serve/applications/` (KubeRay converts the YAML string to JSON as is)."""
    return yaml.safe_load(ray_service["spec"][SERVE_CONFIG])


# --------------------------------------------------------------------------- comparisons


def covers(live: Any, want: Any) -> bool:
    """Every value in `want` is in `live` (extra keys in `live` are fine; lists must match
    item by item)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            k in live and covers(live[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(covers(a, b) for a, b in zip(live, want, strict=True))
        )
    if isinstance(want, bool) or isinstance(live, bool):
        return live is want
    if isinstance(want, (int, float)) and isinstance(live, (int, float)):
        return float(live) == float(want)
    return live == want


def muted_cluster(spec: dict[str, Any]) -> dict[str, Any]:
    """A rayClusterConfig without the fields KubeRay ignores on a running RayService."""
    out = copy.deepcopy(spec)
    for group in out.get("workerGroupSpecs") or []:
        for key in _MUTED_GROUP_FIELDS:
            group.pop(key, None)
    return out


def serve_configs_equal(live: str | None, want: str) -> bool:
    try:
        return yaml.safe_load(live or "") == yaml.safe_load(want)
    except yaml.YAMLError:
        return False


def merge_patch(live: Any, want: Any) -> Any:
    """An RFC 7386 merge patch turning `live` into `want` (None: nothing to change). Keys
    missing from `want` are set to null, i.e. removed."""
    if not isinstance(live, dict) or not isinstance(want, dict):
        return None if live == want else copy.deepcopy(want)
    patch: dict[str, Any] = {}
    for key in live.keys() - want.keys():
        patch[key] = None
    for key, value in want.items():
        if key not in live:
            patch[key] = copy.deepcopy(value)
        else:
            sub = merge_patch(live[key], value)
            if sub is not None or (value is None and live[key] is not None):
                patch[key] = sub
    return patch or None


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 applied (what the API server does with a merge patch), for tests and plans."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def _metadata_patch(live: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    labels = live["metadata"].get("labels") or {}
    missing = {k: v for k, v in want["metadata"]["labels"].items() if labels.get(k) != v}
    if missing:
        patch["labels"] = missing
    return patch


def object_patch(live: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that brings an owned object to `want` (None: it already is).

    RayService: `serveConfigV2` when the parsed configs differ; `rayClusterConfig` only when
    it differs with worker replica fields muted (see the module doc). Other kinds: `spec`."""
    patch: dict[str, Any] = {}
    if meta := _metadata_patch(live, want):
        patch["metadata"] = meta
    live_spec, want_spec = live.get("spec") or {}, want["spec"]
    spec: dict[str, Any] = {}
    if want["kind"] == "RayService":
        for key, value in want_spec.items():
            if key == SERVE_CONFIG:
                if not serve_configs_equal(live_spec.get(key), value):
                    spec[key] = value
            elif key == CLUSTER_CONFIG:
                if not covers(muted_cluster(live_spec.get(key) or {}), muted_cluster(value)):
                    spec[key] = value
            elif not covers(live_spec.get(key), value):
                spec[key] = value
    elif not covers(live_spec, want_spec):
        spec = want_spec
    if spec:
        patch["spec"] = spec
    return patch or None


# -------------------------------------------------------------------------------- a plan


@dataclass(frozen=True)
class Action:
    """One API call: create `body`, merge-patch `body` into `kind/name` (guarded by
    `resource_version`; "adopt" is a patch that also moves the ownerReference to this
    ModelDeployment), or a conflict (an object of that name that isn't ours)."""

    verb: str  # "create" | "patch" | "adopt" | "conflict"
    kind: str
    name: str
    body: dict[str, Any] | None = None
    resource_version: str | None = None

    def describe(self) -> str:
        return f"{self.verb} {self.kind}/{self.name}"


def plan(
    owner: dict[str, Any],
    desired: list[dict[str, Any]],
    live: dict[tuple[str, str], dict[str, Any] | None],
) -> list[Action]:
    """Actions that bring `live` ({(kind, name): object or None}) to `desired`.

    The RayService comes last: its Ray pods must never run without their NetworkPolicy and
    head PodDisruptionBudget, so a failure part-way leaves protections without pods, never
    pods without protections. A conflict anywhere comes first, before anything is written."""
    actions = []
    for want in sorted(desired, key=lambda o: o["kind"] == "RayService"):
        kind, name = want["kind"], want["metadata"]["name"]
        have = live.get((kind, name))
        rv = (have or {}).get("metadata", {}).get("resourceVersion")
        if have is None:
            actions.append(Action("create", kind, name, want))
        elif owned_by_predecessor(have, owner):
            patch = object_patch(have, want) or {}
            meta = patch.setdefault("metadata", {})
            meta["ownerReferences"] = want["metadata"]["ownerReferences"]
            if rv is not None:
                meta["resourceVersion"] = rv
            actions.append(Action("adopt", kind, name, patch, rv))
        elif not is_owned_by(have, owner):
            actions.append(Action("conflict", kind, name))
        elif (patch := object_patch(have, want)) is not None:
            if rv is not None:
                patch.setdefault("metadata", {})["resourceVersion"] = rv
            actions.append(Action("patch", kind, name, patch, rv))
    return sorted(actions, key=lambda a: a.verb != "conflict")


# -------------------------------------------------------------------------------- status


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, ok: bool, reason: str, message: str, previous: list[dict] | None, gen: int | None
) -> dict[str, Any]:
    """A condition; lastTransitionTime moves only when `status` flips."""
    status = "True" if ok else "False"
    old = next((c for c in previous or [] if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status else now()
    out = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if gen is not None:
        out["observedGeneration"] = gen
    return out


def _kuberay_condition(ray_service: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (ray_service.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def _app_status(ray_service: dict[str, Any], app: str) -> tuple[str | None, dict[str, Any]]:
    active = (ray_service.get("status") or {}).get("activeServiceStatus") or {}
    status = (active.get("applicationStatuses") or {}).get(app) or {}
    return status.get("status"), status


def status(
    obj: dict[str, Any],
    ray_service: dict[str, Any] | None,
    *,
    error: str | None = None,
    reason: str | None = None,
    prices: usage.Prices | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The ModelDeployment's status from its RayService (as KubeRay reports it).

    `replicas` is the count the live Serve application is set to: the RayService's once
    KubeRay has observed its latest spec (it then submits the Serve config), else what it was.
    `readyReplicas` is that count once Serve reports the deployment HEALTHY (all target
    replicas running), else the last known ready count, capped at the target. Under
    autoscaling Serve picks the count, so neither is reported. `usage` counts replica-seconds
    from the ready count over time (a sample each time it changes; `prices`: the cost)."""
    meta = obj["metadata"]
    gen = meta.get("generation")
    old = obj.get("status") or {}
    previous = old.get("conditions")
    out: dict[str, Any] = {
        "observedGeneration": gen,
        "selector": worker_selector(meta["name"]),
        "rayService": meta["name"],
    }
    if error is not None:
        out["conditions"] = [
            condition("Ready", False, reason or "InvalidSpec", error, previous, gen),
        ]
        for key in (
            "replicas", "readyReplicas", "serveStatus", "servedSource", "rollout", "usage",
        ):  # fmt: skip
            if key in old:
                out[key] = old[key]
        return _drop_none(out)
    if ray_service is None:
        out["conditions"] = [
            condition("Ready", False, "Creating", "creating the RayService", previous, gen),
            condition("Scaling", True, "Creating", "creating the RayService", previous, gen),
        ]
        return _drop_none(out)

    deployment = parse(obj)
    target = deployment.num_replicas  # None under autoscaling
    rs_meta = ray_service["metadata"]
    rs_status = ray_service.get("status") or {}
    generation = rs_meta.get("generation")
    observed = generation is not None and rs_status.get("observedGeneration") == generation
    app_state, app = _app_status(ray_service, deployment.name)
    dep = (app.get("serveDeploymentStatuses") or {}).get(DEPLOYMENT) or {}
    dep_state = dep.get("status")
    out["serveStatus"] = app_state
    out |= rollout_status(
        old,
        source_text(deployment.spec.source),
        _live_source(ray_service, deployment.name),
        observed=observed,
        app_state=app_state,
        dep=dep,
        app_message=app.get("message") or "",
    )
    live_target = _live_target(ray_service, deployment.name)
    if target is not None:
        replicas = live_target if observed and live_target is not None else old.get("replicas")
        out["replicas"] = replicas
        settled = (
            observed and replicas == target and app_state == "RUNNING" and dep_state == "HEALTHY"
        )
        ready = target if settled else min(old.get("readyReplicas") or 0, target)
        out["readyReplicas"] = ready
    if metered := _usage(deployment, old.get("usage"), out.get("readyReplicas"), prices, clock()):
        out["usage"] = metered

    kuberay_ready = _kuberay_condition(ray_service, "Ready")
    serving = kuberay_ready.get("status") == "True"
    if serving:
        ready_cond = condition(
            "Ready", True, "Serving", f"Serve application {app_state or 'unknown'}", previous, gen
        )
    else:
        why = kuberay_ready.get("reason") or (app_state or "Initializing").title().replace("_", "")
        message = kuberay_ready.get("message") or app.get("message") or "waiting for KubeRay"
        ready_cond = condition("Ready", False, why, message[:500], previous, gen)

    if not observed:
        scaling = condition(
            "Scaling", True, "ConfigPending", "KubeRay has not applied the latest spec yet",
            previous, gen,
        )  # fmt: skip
    elif dep_state in _MOVING:
        scaling = condition(
            "Scaling", True, _MOVING[dep_state], f"Serve deployment is {dep_state}", previous, gen
        )
    elif _kuberay_condition(ray_service, "UpgradeInProgress").get("status") == "True":
        scaling = condition(
            "Scaling", True, "ClusterUpgrade", "KubeRay is preparing a new Ray cluster",
            previous, gen,
        )  # fmt: skip
    else:
        at = f"{target} replica(s)" if target is not None else "Serve autoscaling"
        scaling = condition("Scaling", False, "AtTarget", at, previous, gen)
    out["conditions"] = [ready_cond, scaling]
    return _drop_none(out)


def _usage(
    deployment: ModelDeployment,
    old: dict[str, Any] | None,
    ready: int | None,
    prices: usage.Prices | None,
    now: float,
) -> dict[str, Any] | None:
    """status.usage: the previous samples plus the ready count now, when it changed (under
    autoscaling the count is Serve's and unknown here: the samples so far stand).

    The totals run to the newest sample, not to now: a status that changed with the clock
    would be rewritten on every reconcile, and each write is an event that reconciles again.
    Readers add the time since (the count has held since its newest sample): see
    `usage_to_date`."""
    samples = [usage.ReplicaSample.model_validate(s) for s in (old or {}).get("samples", [])]
    if ready is not None:
        samples = usage.sample(samples, now, ready)
    if not samples:
        return None
    spec = deployment.spec
    metered = usage.deployment_usage(
        deployment.metadata.name,
        samples,
        until=samples[-1].at,
        cpus_per_replica=spec.cpus_per_replica,
        gpus_per_replica=spec.gpus_per_replica,
        prices=prices,
    )
    return metered.model_dump(mode="json", by_alias=True, exclude_none=True)


def usage_to_date(
    md: dict[str, Any], now: float, prices: usage.Prices | None = None
) -> usage.DeploymentUsage | None:
    """A ModelDeployment's usage from its status samples up to `now`."""
    recorded = (md.get("status") or {}).get("usage")
    if not recorded:
        return None
    metered = usage.DeploymentUsage.model_validate(recorded)
    return usage.deployment_usage(
        metered.name,
        metered.samples,
        until=max(now, metered.samples[-1].at) if metered.samples else now,
        cpus_per_replica=metered.cpus_per_replica,
        gpus_per_replica=metered.gpus_per_replica,
        prices=prices,
    )


def source_text(source: dict[str, Any] | Any) -> str | None:
    """A ModelDeployment source as one line: `run NAME`, `sweep NAME` or `checkpoint URI`."""
    if not isinstance(source, dict):
        source = source.model_dump(exclude_none=True) if source is not None else {}
    for key in ("checkpoint", "run", "sweep"):
        if source.get(key):
            return f"{key} {source[key]}"
    return None


def _live_source(ray_service: dict[str, Any], app: str) -> str | None:
    """The model source in the RayService's serveConfigV2 for our application."""
    try:
        doc = yaml.safe_load(ray_service["spec"].get(SERVE_CONFIG) or "") or {}
    except yaml.YAMLError:
        return None
    apps = doc.get("applications") if isinstance(doc, dict) else None
    for entry in apps or []:
        if isinstance(entry, dict) and entry.get("name") == app:
            spec = (((entry.get("args") or {}).get("spec") or {}).get("spec")) or {}
            return source_text(spec.get("source"))
    return None


def rollout_status(
    old: dict[str, Any],
    desired: str | None,
    live: str | None,
    *,
    observed: bool,
    app_state: str | None,
    dep: dict[str, Any],
    app_message: str = "",
) -> dict[str, Any]:
    """`servedSource` and `rollout` of the status: where a change of model source stands.

    `desired` is the spec's source, `live` the one in the RayService's Serve config, `old` the
    previous status; `dep` is Serve's status of our deployment (status, message)."""
    served = old.get("servedSource")
    dep_state = dep.get("status")
    healthy = observed and live == desired and app_state == "RUNNING" and dep_state == "HEALTHY"
    if served is None or served == desired:  # no change of source (or the first deploy)
        out: dict[str, Any] = {"servedSource": desired if healthy else served}
        if old.get("rollout"):
            out["rollout"] = old["rollout"]
        return out
    rollout = {"from": served, "to": desired}
    if not observed or live != desired:
        rollout |= {"state": "InProgress", "message": "waiting for KubeRay to apply the new "
                    "Serve config"}  # fmt: skip
    elif healthy:
        rollout |= {"state": "Complete", "message": f"serving {desired}"}
        served = desired
    elif app_state == "DEPLOY_FAILED" or dep_state == "UNHEALTHY":
        why = (dep.get("message") or app_message or "new replicas failed").strip()
        why = why.splitlines()[-1][:300] if why else "new replicas failed"
        rollout |= {
            "state": "Failed",
            "message": f"{why}; the old replicas keep serving {served}: fix or revert the source",
        }
    else:
        rollout |= {
            "state": "InProgress",
            "message": f"Serve deployment {dep_state or 'starting'}: new replicas load and "
            "verify the checkpoint before old ones drain",
        }
    return {"servedSource": served, "rollout": rollout}


def _live_target(ray_service: dict[str, Any], app: str) -> int | None:
    """num_replicas in the RayService's serveConfigV2 for our application's deployment."""
    try:
        found = targets(ray_service["spec"].get(SERVE_CONFIG))
    except ServeConfigError:  # someone broke the string by hand: report nothing, don't fail
        return None
    for t in found:
        if t.app == app and t.deployment == DEPLOYMENT:
            return t.replicas if t.replicas is not None else 1
    return None


def _drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


def status_patch(obj: dict[str, Any], new: dict[str, Any]) -> dict[str, Any] | None:
    """{"status": ...} when the status changes (None: leave it, no write, no event)."""
    old = obj.get("status") or {}
    if covers(old, new) and covers(new, _drop_none(old)):
        return None
    patch = merge_patch(old, new)
    return {"status": patch} if patch else None
