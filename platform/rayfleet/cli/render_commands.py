"""`rayfleet render`: a spec as KubeRay objects for `kubectl apply` (or a kustomize overlay).

Flags mirror `rayfleet.k8s.RenderOptions` one to one; the output's first line records the
non-default ones, so the file can be regenerated exactly.
"""

from __future__ import annotations

from pathlib import Path

import typer

from rayfleet.cli.output import err_console, handle_errors
from rayfleet.cli.spec_commands import SetOption
from rayfleet.errors import BadInputError
from rayfleet.k8s import RenderOptions, render_text
from rayfleet.k8s import options as defaults

_D = RenderOptions()


@handle_errors
def render(
    spec: Path = typer.Argument(..., help="Job spec YAML file."),
    overrides: list[str] = SetOption,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to this file instead of stdout."
    ),
    image: str | None = typer.Option(
        None, help="Ray image with rayfleet installed; default: the published one (-gpu for GPUs)."
    ),
    namespace: str | None = typer.Option(None, help="metadata.namespace of every object."),
    service_account: str = typer.Option(
        defaults.DEFAULT_SERVICE_ACCOUNT, help="ServiceAccount of the Ray pods (IRSA / WI)."
    ),
    storage_config: str = typer.Option(
        defaults.DEFAULT_STORAGE_CONFIG,
        help="ConfigMap with RAYFLEET_STORAGE, AWS_REGION, AWS_ENDPOINT_URL for every Ray pod.",
    ),
    credentials_secret: str | None = typer.Option(
        None, help="Existing Secret with AWS keys, when the pods have no cloud identity."
    ),
    auth_secret: str | None = typer.Option(
        None, help="Existing Secret with key auth_token; default: KubeRay generates one."
    ),
    operator_namespace: str = typer.Option(
        defaults.DEFAULT_OPERATOR_NAMESPACE, help="KubeRay operator namespace (NetworkPolicy)."
    ),
    ttl_seconds_after_finished: int = typer.Option(_D.ttl_seconds_after_finished, min=0),
    active_deadline_seconds: int = typer.Option(_D.active_deadline_seconds, min=0),
    backoff_limit: int = typer.Option(_D.backoff_limit, min=0, help="RayJob retries."),
    head_cpu: str = typer.Option(_D.head_cpu),
    head_memory: str = typer.Option(_D.head_memory),
    worker_memory: str = typer.Option(_D.worker_memory),
    shm_size: str = typer.Option(_D.shm_size, help="/dev/shm size of every Ray pod."),
    egress_port: list[int] = typer.Option(
        None, help="TCP port Ray pods may reach anywhere (repeatable); default 443."
    ),
) -> None:
    """Write the KubeRay objects for a spec (TrainJob/SweepJob -> RayJob, ModelDeployment ->
    RayService): pipe to kubectl apply -f -."""
    options = RenderOptions(
        image=image,
        namespace=namespace,
        service_account=service_account,
        storage_config=storage_config,
        credentials_secret=credentials_secret,
        auth_secret=auth_secret,
        operator_namespace=operator_namespace,
        ttl_seconds_after_finished=ttl_seconds_after_finished,
        active_deadline_seconds=active_deadline_seconds,
        backoff_limit=backoff_limit,
        head_cpu=head_cpu,
        head_memory=head_memory,
        worker_memory=worker_memory,
        shm_size=shm_size,
        egress_ports=tuple(egress_port) if egress_port else _D.egress_ports,
    )
    text = render_text(spec, overrides or [], options)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise BadInputError(f"{output}: cannot write ({exc.strerror}); check the path") from None
    err_console.print(f"wrote {output}", highlight=False)
