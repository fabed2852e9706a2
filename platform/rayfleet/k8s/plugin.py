"""`kubectl rayfleet`: what kubectl can't do with Ray Serve on KubeRay by itself.

    kubectl rayfleet status [-n NS | -A]     ModelDeployments, RayServices and RayJobs, with
                                             Kueue admission and serving usage to date
    kubectl rayfleet scale NAME --replicas N [-n NS] [--app APP] [--deployment DEP]

Both take `--kube-context NAME`, a kubeconfig context (as kubectl's `--context`). It is not
called `--context` because in `rayfleet` that names a Ray cluster (`rayfleet context ...`);
`--context` still works here, hidden and deprecated.

`scale` works on any RayService, operator or not: KubeRay keeps Serve's replica counts in the
`serveConfigV2` YAML string and gives RayService no scale subresource, so it reads the
RayService, changes that one `num_replicas` in the string (comments and every other field
kept: see `serveconfig.set_replicas`) and sends a merge patch carrying the resourceVersion it
read, which the API server refuses if anyone changed the object in between. KubeRay then
re-submits the config to Serve, which adds or drains replicas in place. A RayService owned
by a ModelDeployment is refused with the command to use instead (the operator would undo the
edit). Installed as the `kubectl-rayfleet` console script; kubectl finds it on PATH.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer
from rich.table import Table

from rayfleet.console import console, err_console, handle_errors, set_debug
from rayfleet.errors import BadInputError
from rayfleet.k8s import crd
from rayfleet.k8s.client import KubeAPI, NotFoundError
from rayfleet.k8s.kueue import admission
from rayfleet.k8s.reconcile import owner_of, usage_to_date
from rayfleet.k8s.serveconfig import ScaleTarget, ServeConfigError, set_replicas, targets

app = typer.Typer(
    name="kubectl-rayfleet",
    help="Scale and inspect Ray Serve on KubeRay: ModelDeployments and plain RayServices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class OwnedError(BadInputError):
    """The RayService is managed by a ModelDeployment: scale that instead."""


# ---------------------------------------------------------------------------- pure parts


def scale_patch(
    ray_service: dict[str, Any],
    replicas: int,
    *,
    app_name: str | None = None,
    deployment: str | None = None,
) -> tuple[dict[str, Any] | None, ScaleTarget]:
    """The merge patch that sets one Serve deployment's `num_replicas` in a RayService (None
    when it already has that count) and the target as it was."""
    meta = ray_service["metadata"]
    where = f"RayService {meta.get('namespace', '')}/{meta['name']}".replace(" /", " ")
    owner = owner_of(ray_service)
    if owner is not None:
        raise OwnedError(
            f"{where} is managed by ModelDeployment {owner}; scale that instead: kubectl scale "
            f"{crd.SINGULAR}/{owner} --replicas {replicas}"
        )
    text = (ray_service.get("spec") or {}).get("serveConfigV2")
    new, before = set_replicas(
        text, replicas, app=app_name, deployment=deployment, where=f"{where} serveConfigV2"
    )
    if before.replicas == replicas:
        return None, before
    patch: dict[str, Any] = {"spec": {"serveConfigV2": new}}
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    return patch, before


@dataclass(frozen=True)
class Row:
    namespace: str
    kind: str
    name: str
    replicas: str  # targets, e.g. "digits/ModelServer=3"
    ready: str
    status: str
    note: str = ""
    queue: str = "-"  # Kueue admission (kueue.admission), "-" when not queued
    usage: str = ""  # a ModelDeployment's replica-hours (and cost) to date


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def _app_states(service: dict[str, Any]) -> str:
    active = (service.get("status") or {}).get("activeServiceStatus") or {}
    apps = active.get("applicationStatuses") or {}
    return ", ".join(f"{n}={(s or {}).get('status', '?')}" for n, s in sorted(apps.items())) or "-"


def _usage_text(md: dict[str, Any], now: float) -> str:
    metered = usage_to_date(md, now)
    if metered is None:
        return ""
    text = f"{metered.replica_hours:.2f} replica-h"
    if (recorded := ((md.get("status") or {}).get("usage") or {}).get("cost")) is not None:
        text += f", {recorded.get('currency', '')} {recorded.get('total', 0):.2f}+"
    return text


def _job_row(job: dict[str, Any], workloads: Sequence[dict[str, Any]]) -> Row:
    meta, st = job["metadata"], job.get("status") or {}
    groups = ((job.get("spec") or {}).get("rayClusterSpec") or {}).get("workerGroupSpecs") or []
    workers = sum(int(g.get("replicas") or 0) for g in groups)
    return Row(
        namespace=meta.get("namespace", ""),
        kind="RayJob",
        name=meta["name"],
        replicas=f"{workers} worker(s)",
        ready=st.get("jobDeploymentStatus") or "-",
        status=st.get("jobStatus") or "-",
        note="suspended" if (job.get("spec") or {}).get("suspend") else "",
        queue=admission(job, workloads).text(),
    )


def status_rows(
    model_deployments: list[dict[str, Any]],
    ray_services: list[dict[str, Any]],
    ray_jobs: Sequence[dict[str, Any]] = (),
    workloads: Sequence[dict[str, Any]] = (),
    now: float | None = None,
) -> list[Row]:
    """One row per ModelDeployment, RayService and (rayfleet's) RayJob, what `status` prints;
    `workloads` are Kueue's, for the queued ones' admission."""
    now = time.time() if now is None else now
    rows = []
    for md in model_deployments:
        meta, spec, st = md["metadata"], md.get("spec") or {}, md.get("status") or {}
        auto = spec.get("autoscaling")
        want = (
            f"{auto.get('minReplicas', 1)}-{auto.get('maxReplicas', 2)} (autoscaling)"
            if auto
            else str(spec.get("replicas", 1))
        )
        ready = _condition(md, "Ready")
        scaling = _condition(md, "Scaling")
        note = (
            scaling.get("reason", "")
            if scaling.get("status") == "True"
            else ready.get("message", "")
        )
        note = note if not ready.get("status") == "True" else scaling.get("reason", "")
        rollout = st.get("rollout") or {}
        if rollout and rollout.get("state") != "Complete":
            note = f"rollout {rollout.get('state')}: {rollout.get('from')} -> {rollout.get('to')}"
            if rollout.get("state") == "Failed":
                note += f" ({rollout.get('message', '')})"
        rows.append(
            Row(
                namespace=meta.get("namespace", ""),
                kind=crd.KIND,
                name=meta["name"],
                replicas=want,
                ready=str(st.get("readyReplicas", "-")),
                status=ready.get("reason", "Unknown"),
                note=note,
                usage=_usage_text(md, now),
            )
        )
    for service in ray_services:
        meta = service["metadata"]
        try:
            found = ", ".join(
                f"{t.app}/{t.deployment}={t.describe()}"
                for t in targets(service["spec"].get("serveConfigV2"))
            )
        except ServeConfigError as exc:
            found = f"? ({str(exc)[:60]})"
        owner = owner_of(service)
        ready = _condition(service, "Ready")
        rows.append(
            Row(
                namespace=meta.get("namespace", ""),
                kind="RayService",
                name=meta["name"],
                replicas=found or "-",
                ready=ready.get("status", "Unknown"),
                status=_app_states(service),
                note=f"owned by {crd.KIND} {owner}" if owner else "",
                queue=admission(service, workloads).text(),
            )
        )
    rows.extend(_job_row(job, workloads) for job in ray_jobs)
    return rows


# --------------------------------------------------------------------------------- commands


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")):
    set_debug(debug)


def _cluster(kube_context: str | None) -> KubeAPI:
    return KubeAPI(context=kube_context)


def _kube_context(kube_context: str | None, deprecated: str | None) -> str | None:
    if deprecated is not None:
        err_console.print(
            "note: --context is deprecated here; use --kube-context (a kubeconfig context)",
            highlight=False,
        )
    return kube_context or deprecated


NamespaceOption = typer.Option(None, "--namespace", "-n", help="Namespace; default: kubeconfig's.")
KubeContextOption = typer.Option(
    None, "--kube-context", help="kubeconfig context (kubectl's --context)."
)
DeprecatedContextOption = typer.Option(None, "--context", hidden=True)


@app.command()
@handle_errors
def status(
    namespace: str | None = NamespaceOption,
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A"),
    kube_context: str | None = KubeContextOption,
    context: str | None = DeprecatedContextOption,
) -> None:
    """ModelDeployments and RayServices with their Serve replica targets and states."""
    cluster = _cluster(_kube_context(kube_context, context))
    ns = None if all_namespaces else (namespace or cluster.default_namespace())
    try:
        mds = cluster.list(crd.KIND, ns)
    except NotFoundError:
        mds = []
        err_console.print(f"note: the {crd.NAME} CRD is not installed", highlight=False)
    services = cluster.list("RayService", ns)
    jobs = _optional(cluster, "RayJob", ns, JOB_SELECTOR)
    workloads = _optional(cluster, "Workload", ns)  # none: Kueue is not installed
    rows = status_rows(mds, services, jobs, workloads)
    if not rows:
        console.print(f"no ModelDeployments, RayServices or RayJobs in {ns or 'any namespace'}")
        return
    queued = any(r.queue != "-" for r in rows)
    metered = any(r.usage for r in rows)
    table = Table(box=None, pad_edge=False)
    headers = ["NAMESPACE"] if ns is None else []
    extra = [*(["QUEUE"] if queued else []), *(["USAGE"] if metered else [])]
    for h in [*headers, "KIND", "NAME", "REPLICAS", "READY", "STATUS", *extra, ""]:
        table.add_column(h)
    for r in rows:
        cells = [r.namespace] if ns is None else []
        more = [*([r.queue] if queued else []), *([r.usage] if metered else [])]
        table.add_row(*cells, r.kind, r.name, r.replicas, r.ready, r.status, *more, r.note)
    console.print(table)


JOB_SELECTOR = "app.kubernetes.io/part-of=rayfleet"


def _optional(
    cluster: KubeAPI, kind: str, ns: str | None, selector: str | None = None
) -> list[dict[str, Any]]:
    """Objects of a kind whose CRD may be missing (RayJob without it is odd; Kueue's
    Workload is there only with Kueue)."""
    try:
        return cluster.list(kind, ns, selector)
    except NotFoundError:
        return []


@app.command()
@handle_errors
def scale(
    name: str = typer.Argument(..., help="RayService name."),
    replicas: int = typer.Option(..., "--replicas", min=1, help="Serve replicas to run."),
    namespace: str | None = NamespaceOption,
    app_name: str | None = typer.Option(None, "--app", help="Serve application (if several)."),
    deployment: str | None = typer.Option(
        None, "--deployment", help="Serve deployment in the application (if several)."
    ),
    kube_context: str | None = KubeContextOption,
    context: str | None = DeprecatedContextOption,
) -> None:
    """Set a Serve deployment's num_replicas in a RayService's serveConfigV2 (in place)."""
    cluster = _cluster(_kube_context(kube_context, context))
    ns = namespace or cluster.default_namespace()
    service = cluster.get("RayService", ns, name)
    if service is None:
        raise NotFoundError(
            f"RayService {ns}/{name} not found; list them with `kubectl get rayservices -n {ns}`"
        )
    patch, before = scale_patch(service, replicas, app_name=app_name, deployment=deployment)
    target = f"{before.app}/{before.deployment}"
    if patch is None:
        console.print(f"rayservice/{name}: {target} already has {replicas} replica(s)")
        return
    cluster.patch("RayService", ns, name, patch)
    console.print(
        f"rayservice/{name} scaled: {target} {before.describe()} -> {replicas} "
        "(KubeRay applies it to Serve in place)",
        highlight=False,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
