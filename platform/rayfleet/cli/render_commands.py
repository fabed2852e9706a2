"""`rayfleet render`: a spec as KubeRay objects for `kubectl apply` (or a kustomize overlay).

Its cluster-side flags are not declared here: they are `rayfleet.k8s.options.FLAGS`, one per
RenderOptions field (the operator takes the same ones), turned into typer options by
`with_flags`. The output's first line records the non-default ones, so the file can be
regenerated exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from rayfleet.cli.options import SetOption, with_flags
from rayfleet.cli.output import err_console
from rayfleet.errors import BadInputError
from rayfleet.k8s import render_text
from rayfleet.k8s.options import FLAGS, from_flags


def render(
    spec: Path = typer.Argument(..., help="Job spec YAML file."),
    overrides: list[str] = SetOption,
    # Not -o: across the CLI, -o/--output picks text or json (cli/output.py).
    output: Path | None = typer.Option(
        None, "--out-file", help="Write to this file instead of stdout."
    ),
    **flags: Any,
) -> None:
    """Write the KubeRay objects for a spec (TrainJob/SweepJob -> RayJob, ModelDeployment ->
    RayService): pipe to kubectl apply -f -."""
    text = render_text(spec, overrides or [], from_flags(flags))
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise BadInputError(f"{output}: cannot write ({exc.strerror}); check the path") from None
    err_console.print(f"wrote {output}", highlight=False)


render = with_flags(FLAGS)(render)
