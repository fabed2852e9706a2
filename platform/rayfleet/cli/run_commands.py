"""`rayfleet run`: a job spec on an embedded local Ray (or the cluster in RAY_ADDRESS)."""

from __future__ import annotations

from pathlib import Path

import typer

from rayfleet.cli.output import TrainProgress, console, handle_errors
from rayfleet.cli.spec_commands import SetOption
from rayfleet.specs import load_spec


@handle_errors
def run(
    spec: Path = typer.Argument(..., help="Job spec YAML file."),
    overrides: list[str] = SetOption,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray and worker logs."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Resume this run's newest checkpoint even if it was trained from a different "
        "model, dataset or optimiser setting.",
    ),
) -> None:
    """Run a TrainJob: preflight, data-parallel training, verified checkpoints."""
    from rayfleet.train.launcher import run_train_job

    job = load_spec(spec, overrides or [], expect="TrainJob")
    s = job.spec
    console.print(
        f"[bold]{job.name}[/]: {s.model.recipe or s.model.entrypoint}, "
        f"{s.scaling.num_workers} worker(s) {'GPU' if s.scaling.use_gpu else 'CPU'}, "
        f"{s.run.epochs} epochs -> {job.run_uri()}",
        highlight=False,
    )
    with TrainProgress(s.run.epochs) as view:
        result = run_train_job(
            job,
            on_event=view,
            sys_path=[str(spec.resolve().parent)],
            verbose=verbose,
            force=force,
        )
    console.print(
        f"[green]done[/] in {result.elapsed_s:.1f}s ({result.attempts} attempt(s)); "
        f"final epoch {result.epoch + 1}:",
        highlight=False,
    )
    for key, value in result.metrics.items():
        if key != "epoch":
            console.print(
                f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}"
            )
    console.print(f"checkpoint: {result.checkpoint_uri}", highlight=False)
