"""`rayfleet doctor`: check a cluster's prerequisites for rayfleet, one line per check.

Options follow the rest of the CLI: `--kube-context` is a kubeconfig context (as in `kubectl
rayfleet`), while `--context`, `--address` and `--token-file` name the Ray cluster as every
other rayfleet command does (they only feed the dashboard check). The checks themselves live
in rayfleet.k8s.doctor.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from rayfleet.cli.options import AddressOption, ContextOption, InsecureOption, TokenFileOption
from rayfleet.cli.output import Output, OutputOption, console, handle_errors, print_json
from rayfleet.k8s import doctor as checks


@handle_errors
def doctor(
    kube_context: str | None = typer.Option(
        None, "--kube-context", help="kubeconfig context (kubectl's --context)."
    ),
    namespace: str | None = typer.Option(
        None, "--namespace", "-n", help="Namespace of the release; default: kubeconfig's."
    ),
    release: str | None = typer.Option(
        None, "--release", help="Helm release name; default: the one rayfleet release in -n."
    ),
    address: str | None = AddressOption,
    context: str | None = ContextOption,
    token_file: Path | None = TokenFileOption,
    insecure: bool = InsecureOption,
    storage: str | None = typer.Option(
        None, "--storage", help="Storage URI to probe; default: the Ray pods' RAYFLEET_STORAGE."
    ),
    skip_storage: bool = typer.Option(
        False, "--skip-storage", help="Don't start the in-cluster storage probe pod."
    ),
    storage_timeout: float = typer.Option(
        180, "--storage-timeout", min=10, help="Seconds to wait for the storage probe pod."
    ),
    output: Output = OutputOption,
) -> None:
    """Check each prerequisite against the live cluster, one line each with its fix: API,
    KubeRay operator (>= 1.5.1) and CRDs, ModelDeployment operator, the release's RayCluster
    and pods, the token Secret, storage from inside the cluster, the dashboard with the token.
    Exit 0 when nothing failed, 1 otherwise."""

    reader = checks.ClusterReader(context=kube_context)
    ns = namespace or reader.default_namespace()
    dashboard = partial(_dashboard, checks, address, context, token_file, insecure, ns)
    report = checks.run_checks(
        reader,
        ns,
        release,
        storage=not skip_storage,
        storage_uri_override=storage,
        storage_timeout_s=storage_timeout,
        dashboard=dashboard,
    )
    if output is Output.json:
        print_json(report.document())
    else:
        for check in report.checks:
            style = {"pass": "green", "fail": "bold red", "warn": "yellow"}.get(check.status, "dim")
            console.print(f"[{style}]{check.line()}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(0 if report.ok else 1)


def _dashboard(checks, address, context, token_file, insecure, namespace, raycluster):
    return checks.check_dashboard(
        address, context, token_file, insecure=insecure, namespace=namespace, raycluster=raycluster
    )
