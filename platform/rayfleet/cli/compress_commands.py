"""`rayfleet compress --run NAME --method M --to NAME`: a smaller checkpoint that serves as is.

The result is a new run, `<storage>/runs/<to>/`, holding one verified checkpoint whose
manifest names its source (URI and manifest sha256) and method; `rayfleet serve` with
`source.run: <to>` serves it like any trained run. torch is imported only once the arguments
have been checked (rayfleet.compress.job imports it inside the work).
"""

from __future__ import annotations

import typer

from rayfleet.cli.output import Output, OutputOption, console, handle_errors, print_json


@handle_errors
def compress(
    run: str = typer.Option(..., "--run", help="The trained run to compress (newest verified)."),
    method: str = typer.Option(
        ..., "--method", help="dynamic-int8 (Linear/LSTM), static-int8 (CNNs, MLPs) or fp16."
    ),
    to: str = typer.Option(..., "--to", help="Name of the new run that receives the result."),
    storage: str | None = typer.Option(
        None, "--storage", help="Storage root; default $RAYFLEET_STORAGE or ~/.rayfleet/store."
    ),
    dataset: str | None = typer.Option(
        None,
        "--dataset",
        help="Dataset name or URI for calibration and the accuracy check; default the run's.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --to run."),
    output: Output = OutputOption,
) -> None:
    """Compress a run's newest verified checkpoint into a new, verified, servable run."""
    from rayfleet.compress.job import compress_run
    from rayfleet.specs.base import resolve_storage

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
