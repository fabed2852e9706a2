"""`rayfleet compress --run NAME --method M --to NAME`: a smaller checkpoint that serves as is.

The result is a new run, `<storage>/runs/<to>/`, holding one verified checkpoint whose
manifest names its source (URI and manifest sha256) and method; `rayfleet serve` with
`source.run: <to>` serves it like any trained run. torch is imported only once the arguments
have been checked (rayfleet.compress.job imports it inside the work).

`--method distill` trains instead of transforming: a student TrainJob (the teacher's recipe,
`--student-set` or a default smaller config, `--temperature`, `--alpha`, `--epochs`,
`--workers`) on the embedded or connected Ray, with `rayfleet run`'s progress display; those
flags are refused with any other method rather than silently ignored.
"""

from __future__ import annotations

import typer

from rayfleet.cli.options import StorageOption
from rayfleet.cli.output import (
    Output,
    OutputOption,
    TrainProgress,
    console,
    handle_errors,
    print_json,
    progress_console,
    stdout_for_json,
)
from rayfleet.compress import distill
from rayfleet.compress.distill import check_distill_only
from rayfleet.compress.job import attach_to_source, compress_run
from rayfleet.compress.methods import method_named
from rayfleet.specs.base import resolve_storage


@handle_errors
def compress(
    run: str = typer.Option(..., "--run", help="The trained run to compress (newest verified)."),
    method: str = typer.Option(
        ...,
        "--method",
        help="dynamic-int8 (Linear/LSTM), static-int8 (CNNs, MLPs), fp16, or distill (train "
        "a smaller student of the same recipe on the teacher's soft labels).",
    ),
    to: str = typer.Option(..., "--to", help="Name of the new run that receives the result."),
    storage: str | None = StorageOption,
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="Dataset name or URI for calibration and the accuracy check; default the run's.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --to run."),
    student_set: list[str] | None = typer.Option(
        None,
        "--student-set",
        help="distill: a student model.config key=value (repeatable); default: the teacher's "
        "widths divided by 4.",
    ),
    temperature: float | None = typer.Option(
        None, "--temperature", help="distill: softmax temperature T of the soft labels (4)."
    ),
    alpha: float | None = typer.Option(
        None, "--alpha", help="distill: weight of the soft-label term; 1-alpha on labels (0.7)."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", help="distill: student epochs; default 3x the teacher run's."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="distill: data-parallel workers; default the teacher run's."
    ),
    output: Output = OutputOption,
) -> None:
    """Compress a run's newest verified checkpoint into a new, verified, servable run."""

    method_named(method)  # an unknown method first, before any flag it would not read
    check_distill_only(
        method,
        student_set=student_set or [],
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        workers=workers,
    )
    if method == "distill":
        result = _distill(
            run,
            resolve_storage(storage),
            to=to,
            overwrite=overwrite,
            dataset=dataset,
            student_set=student_set or [],
            temperature=temperature,
            alpha=alpha,
            epochs=epochs,
            workers=workers,
            output=output,
        )
    else:
        result = compress_run(
            run,
            storage=resolve_storage(storage),
            method=method,
            to=to,
            overwrite=overwrite,
            dataset=dataset,
        )
    lineage = result.compression
    if output is Output.json:
        return print_json(
            {
                "checkpoint": str(result.checkpoint),
                "source": str(result.source),
                "sizeRatio": round(lineage.size_ratio, 4),
                "mlflowAttached": result.mlflow_attached,
                **lineage.to_meta(),
            }
        )
    console.print(f"{run} -> {result.checkpoint}  ({lineage.method})", highlight=False)
    console.print(
        f"weights {lineage.source_weights_bytes:,} -> {lineage.weights_bytes:,} bytes "
        f"({lineage.size_ratio:.2f}x)",
        highlight=False,
    )
    if (ev := lineage.evaluation) is not None:
        console.print(
            f"{ev.split} accuracy {ev.source_accuracy:.4f} -> {ev.accuracy:.4f} "
            f"({ev.delta:+.4f}, {ev.rows} rows)",
            highlight=False,
        )
    if result.mlflow_attached:
        console.print(f"lineage attached to run {run}'s MLflow run", highlight=False)
    console.print(f"serve it: set source.run: {to} in a ModelDeployment spec", highlight=False)


def _distill(run: str, storage, *, output: Output, temperature, alpha, **options):
    """Check, announce and train the student run (launcher progress as `rayfleet run` shows
    it), then attach the lineage to the teacher's MLflow run like the other methods."""
    from dataclasses import replace

    plan = distill.prepare_distill(
        run,
        storage=storage,
        temperature=distill.DEFAULT_TEMPERATURE if temperature is None else temperature,
        alpha=distill.DEFAULT_ALPHA if alpha is None else alpha,
        **options,
    )
    job = plan.job
    progress = progress_console(output)
    progress.print(
        f"[bold]{plan.to}[/]: distill {run} ({plan.recipe} {plan.teacher_config}) into "
        f"{plan.student_config}, T={plan.temperature:g}, alpha={plan.alpha:g}, "
        f"{job.spec.scaling.num_workers} worker(s), {job.epochs_planned()} epochs -> "
        f"{job.run_uri()}",
        highlight=False,
    )
    with stdout_for_json(output), TrainProgress(job.epochs_planned(), progress) as view:
        result = distill.run_distill(plan, on_event=view)
    attached = attach_to_source(storage.join("runs", run), plan.to, result)
    return replace(result, mlflow_attached=attached)
