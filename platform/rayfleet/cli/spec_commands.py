"""`rayfleet validate` and `rayfleet schema`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from rayfleet.cli.options import SetOption
from rayfleet.cli.output import console, handle_errors
from rayfleet.specs import KINDS, json_schema, load_spec
from rayfleet.tune.space import prepare


@handle_errors
def validate(
    spec: Path = typer.Argument(..., help="Job spec YAML file."),
    overrides: list[str] = SetOption,
) -> None:
    """Validate a job spec and print what it resolves to."""
    job = load_spec(spec, overrides or [])
    if job.kind == "SweepJob":
        prep = prepare(job, source_dir=spec.resolve().parent)
        console.print(f"[green]valid[/] SweepJob {job.name}", highlight=False)
        console.print(f"  trains:  TrainJob {prep.base.name}", highlight=False)
        console.print(f"  tunes:   {', '.join(job.spec.search_space)}", highlight=False)
        console.print(f"  sweep:   {prep.uri}", highlight=False)
        return
    if job.kind == "ModelDeployment":
        console.print(f"[green]valid[/] ModelDeployment {job.name}", highlight=False)
        console.print(
            f"  model:   {job.model_name} <- {job.spec.source.describe()}", highlight=False
        )
        console.print(f"  storage: {job.storage_uri()}", highlight=False)
        return
    console.print(f"[green]valid[/] {job.kind} {job.name}", highlight=False)
    console.print(f"  storage: {job.storage_uri()}", highlight=False)
    if job.spec.dataset:
        console.print(f"  dataset: {job.dataset_uri()}", highlight=False)
    console.print(f"  run:     {job.run_uri()}", highlight=False)


@handle_errors
def schema(
    kind: str = typer.Argument("TrainJob", help=f"Spec kind: {', '.join(KINDS)}."),
) -> None:
    """Print the JSON Schema of a spec kind (generated from the pydantic models)."""
    typer.echo(json.dumps(json_schema(kind), indent=2))
