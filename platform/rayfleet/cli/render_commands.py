"""`rayfleet render`: a spec as KubeRay objects for `kubectl apply` (or a kustomize overlay).

Its cluster-side flags are not declared here: they are `rayfleet.k8s.options.FLAGS`, one per
RenderOptions field (the operator takes the same ones), turned into typer options below. The
output's first line records the non-default ones, so the file can be regenerated exactly.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from rayfleet.cli.options import SetOption
from rayfleet.cli.output import err_console, handle_errors
from rayfleet.errors import BadInputError
from rayfleet.k8s import render_text
from rayfleet.k8s.options import FLAGS, Flag, from_flags


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


def _parameter(flag: Flag) -> inspect.Parameter:
    """A RenderOptions flag as a typer option."""
    if flag.repeat:
        annotation: Any = list[flag.type]  # type: ignore[name-defined]
        default = typer.Option(None, flag.option, metavar=flag.metavar, help=flag.help)
    else:
        annotation = flag.type if flag.default is not None else flag.type | None
        extra = {"min": flag.minimum} if flag.minimum is not None else {}
        default = typer.Option(
            flag.default, flag.option, metavar=flag.metavar, help=flag.help, **extra
        )
    return inspect.Parameter(
        flag.field, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _with_render_flags(fn):
    """`fn` with its `**flags` replaced by one keyword option per RenderOptions flag (typer
    reads the signature), errors handled as every command's are."""
    signature = inspect.signature(fn, eval_str=True)
    fixed = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    command = handle_errors(fn)
    command.__signature__ = signature.replace(parameters=fixed + [_parameter(f) for f in FLAGS])
    return command


render = _with_render_flags(render)
