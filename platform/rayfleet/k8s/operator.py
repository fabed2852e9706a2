"""The rayfleet operator: each ModelDeployment reconciled onto an owned KubeRay RayService.

    python -m rayfleet.k8s.operator --namespace ml          # one namespace (a Role is enough)
    python -m rayfleet.k8s.operator --all-namespaces        # cluster-wide (a ClusterRole)

Built on kopf; the handlers only move data between the API server and the pure functions in
`reconcile` (what to create or patch, what the status says):

- a ModelDeployment is created, resumed (operator start) or changed (`kubectl apply`,
  `kubectl scale`, HPA) -> its NetworkPolicy and head PodDisruptionBudget, then its
  RayService, are created or merge-patched (guarded by resourceVersion), then its status is
  written. Children still owned by a deleted ModelDeployment of the same name (deleted and
  re-created before the garbage collector got to them) are adopted, not refused;
- a RayService it owns changes (KubeRay writes its status) -> the owner's status follows;
  one that was deleted by hand is recreated;
- a NetworkPolicy or PodDisruptionBudget it owns is deleted or edited -> the owner is
  reconciled, which recreates or restores it. These watches follow ownerReferences, not the
  owner label, which a hand edit could remove.

Deletion needs no handler: the owned objects carry an ownerReference, so Kubernetes' garbage
collector removes them, and no finalizer can leave a ModelDeployment stuck when the operator
is gone. kopf runs standalone (no peering objects) with resource scanning off (no watch on
CRDs or namespaces) and keeps its bookkeeping in `operator.rayfleet.io/*` annotations, so the
RBAC it needs is just: modeldeployments get/list/watch/patch (+ status patch), rayservices
get/list/watch/create/patch, networkpolicies and poddisruptionbudgets get/list/watch/create/
patch, modeldeployments/finalizers update (the children's ownerReferences set
blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement admission plugin allows
only to whoever may update the owner's finalizers), events create. Run one replica: without
peering, two would both write.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import kopf

from rayfleet import usage
from rayfleet.errors import BadInputError
from rayfleet.k8s import crd, reconcile
from rayfleet.k8s.client import ConflictError, KubeAPI, NotFoundError
from rayfleet.k8s.options import OPERATOR_FLAGS, RenderOptions, from_flags

ANNOTATION_PREFIX = "operator.rayfleet.io"
RAY_SERVICES = ("ray.io", "v1", "rayservices")
NETWORK_POLICIES = ("networking.k8s.io", "v1", "networkpolicies")
PDBS = ("policy", "v1", "poddisruptionbudgets")
MODEL_DEPLOYMENTS = (crd.GROUP, crd.VERSION, crd.PLURAL)

log = logging.getLogger("rayfleet.operator")


class _State:
    """What the entrypoint configures before kopf starts: render options and the client."""

    options = RenderOptions()
    cluster: KubeAPI | None = None
    prices: usage.Prices | None = None  # $RAYFLEET_PRICES, for status.usage's cost

    @classmethod
    def client(cls) -> KubeAPI:
        if cls.cluster is None:
            cls.cluster = KubeAPI()
        return cls.cluster


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings for least privilege: no peering, no CRD/namespace scanning, bookkeeping
    in annotations (a structural schema would prune kopf's default `status.kopf`)."""
    settings.peering.standalone = True
    settings.scanning.disabled = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


def _post(md: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event on the ModelDeployment (kopf queues and posts it)."""
    post = kopf.warn if type_ == "Warning" else kopf.info
    post(md, reason=reason, message=message[:1000])


def _write_status(md: dict[str, Any], new: dict[str, Any]) -> None:
    patch = reconcile.status_patch(md, new)
    if patch is not None:
        meta = md["metadata"]
        _State.client().patch(crd.KIND, meta["namespace"], meta["name"], patch, status=True)


def reconcile_one(md: dict[str, Any]) -> dict[str, Any] | None:
    """Bring one ModelDeployment's objects to its spec and write its status. Returns the
    RayService as last seen. kopf.PermanentError for a spec or name that can't work (retried
    on the next change), kopf.TemporaryError for a write that raced another one."""
    cluster = _State.client()
    meta = md["metadata"]
    namespace = meta["namespace"]
    try:
        desired = reconcile.desired_objects(md, _State.options)
    except BadInputError as exc:
        _write_status(md, reconcile.status(md, None, error=str(exc), reason="InvalidSpec"))
        _post(md, "Warning", "InvalidSpec", str(exc))
        raise kopf.PermanentError(str(exc)) from None
    live = {
        (o["kind"], o["metadata"]["name"]): cluster.get(o["kind"], namespace, o["metadata"]["name"])
        for o in desired
    }
    ray_service = live.get(("RayService", meta["name"]))
    for action in reconcile.plan(md, desired, live):
        if action.verb == "conflict":
            message = (
                f"{action.kind} {namespace}/{action.name} exists and is not owned by this "
                "ModelDeployment; delete it (or rename the ModelDeployment)"
            )
            _write_status(md, reconcile.status(md, None, error=message, reason="NameConflict"))
            _post(md, "Warning", "NameConflict", message)
            raise kopf.PermanentError(message)
        try:
            if action.verb == "create":
                out = cluster.create(action.kind, namespace, action.body)
            else:
                out = cluster.patch(action.kind, namespace, action.name, action.body)
        except ConflictError as exc:
            raise kopf.TemporaryError(str(exc), delay=2) from None
        except NotFoundError as exc:  # the garbage collector took a child we were adopting
            raise kopf.TemporaryError(str(exc), delay=2) from None
        if action.kind == "RayService":
            ray_service = out
        what = _describe(action)
        log.info("%s/%s: %s", namespace, meta["name"], what)
        reason = {"create": "Created", "adopt": "Adopted"}.get(action.verb, "Updated")
        _post(md, "Normal", reason, what)
    _write_status(md, reconcile.status(md, ray_service, prices=_State.prices))
    return ray_service


def _describe(action: reconcile.Action) -> str:
    if action.verb == "patch" and action.kind == "RayService":
        changed = sorted((action.body or {}).get("spec", {}))
        return f"patched RayService/{action.name} ({', '.join(changed) or 'metadata'})"
    return action.describe()


@kopf.on.resume(*MODEL_DEPLOYMENTS)
@kopf.on.create(*MODEL_DEPLOYMENTS)
@kopf.on.update(*MODEL_DEPLOYMENTS)
def model_deployment_changed(body: kopf.Body, **_: Any) -> None:
    reconcile_one(_plain(body))


@kopf.on.event(*RAY_SERVICES, labels={reconcile.OWNER_LABEL: kopf.PRESENT})
def ray_service_changed(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """KubeRay updated (or someone deleted) a RayService we own: refresh the owner."""
    service = _plain(body)
    md = _live_owner(service)
    if md is None:
        return
    if event.get("type") == "DELETED":
        reconcile_one(md)
        return
    try:
        new = reconcile.status(md, service, prices=_State.prices)
    except BadInputError:
        return  # the owner's spec is invalid; its own handler reports that
    _write_status(md, new)


def _has_owner(body: kopf.Body, **_: Any) -> bool:
    return reconcile.owner_of(_plain(body)) is not None


@kopf.on.event(*NETWORK_POLICIES, when=_has_owner)
@kopf.on.event(*PDBS, when=_has_owner)
def owned_child_changed(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """A NetworkPolicy or head PDB we own was deleted or edited: reconcile its owner, which
    recreates it or patches it back (and writes nothing when it still matches)."""
    md = _live_owner(_plain(body))
    if md is None:
        return
    try:
        reconcile_one(md)
    except (kopf.PermanentError, kopf.TemporaryError) as exc:
        # Reported on the ModelDeployment already; its own handler retries.
        meta = md["metadata"]
        log.warning("%s/%s: %s", meta.get("namespace"), meta.get("name"), exc)


def _live_owner(child: dict[str, Any]) -> dict[str, Any] | None:
    """The ModelDeployment that owns `child`, unless it is gone or being deleted (then the
    garbage collector is taking the rest)."""
    owner = reconcile.owner_of(child)
    namespace = child["metadata"].get("namespace")
    if owner is None or namespace is None:
        return None
    md = _State.client().get(crd.KIND, namespace, owner)
    if md is None or md["metadata"].get("deletionTimestamp"):
        return None
    return md


def _plain(body: Any) -> dict[str, Any]:
    """kopf's read-only body as a plain, deep dict."""
    return json.loads(json.dumps(dict(body), default=dict))


# ------------------------------------------------------------------------------ entrypoint


def add_render_flags(parser: argparse.ArgumentParser) -> None:
    """The RenderOptions flags that shape a RayService, as `rayfleet render` names them
    (declared once, in rayfleet.k8s.options)."""
    group = parser.add_argument_group("the RayServices it creates (as for `rayfleet render`)")
    for flag in OPERATOR_FLAGS:
        group.add_argument(
            flag.option,
            dest=flag.field,
            type=flag.type,
            action="append" if flag.repeat else "store",
            default=None if flag.repeat else flag.default,
            metavar=flag.metavar,
            help=flag.help + (f" (default: {_shown(flag.default)})" if flag.default else ""),
        )


def _shown(default: Any) -> str:
    return ", ".join(map(str, default)) if isinstance(default, tuple) else str(default)


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(
        prog="python -m rayfleet.k8s.operator",
        description="Reconcile rayfleet ModelDeployments onto KubeRay RayServices.",
    )
    scope = out.add_mutually_exclusive_group(required=True)
    scope.add_argument("-n", "--namespace", action="append", help="namespace to watch (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    out.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    add_render_flags(out)
    return out


def options_from(args: argparse.Namespace) -> RenderOptions:
    """RenderOptions from parsed operator arguments; BadInputError for a bad value."""
    return from_flags({flag.field: getattr(args, flag.field) for flag in OPERATOR_FLAGS})


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        _State.options = options_from(args)
        _State.prices = usage.load_prices(None)  # a bad table fails here, in one line
        _ = _State.client().api  # credentials first: one line, not kopf's retry loop of tracebacks
    except BadInputError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    kopf.run(
        standalone=True,
        clusterwide=args.all_namespaces,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
