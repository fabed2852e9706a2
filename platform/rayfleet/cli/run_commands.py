"""`rayfleet run`: a job spec on an embedded local Ray (or the cluster in RAY_ADDRESS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from rayfleet import record, usage
from rayfleet.cli.options import PricesOption, SetOption, VerboseOption
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
from rayfleet.specs import load_spec
from rayfleet.storage.filesystem import filesystem_for  # pyarrow: not for --help
from rayfleet.storage.logs import LOGS_DIR, ship_output
from rayfleet.train.launcher import run_train_job
from rayfleet.usage import summary


@handle_errors
def run(
    spec: Path = typer.Argument(..., help="Job spec YAML file."),
    overrides: list[str] = SetOption,
    verbose: bool = VerboseOption,
    force: bool = typer.Option(
        False,
        "--force",
        help="Resume this run's newest checkpoint even if it was trained from a different "
        "model, dataset or optimiser setting.",
    ),
    prices: Path | None = PricesOption,
    output: Output = OutputOption,
) -> None:
    """Run a TrainJob: preflight, data-parallel training, verified checkpoints. The driver's
    output is also copied to <run>/logs/ (`rayfleet jobs logs NAME --storage URI`); its usage
    (and cost, with a price table) goes to the run record."""

    job = load_spec(spec, overrides or [], expect="TrainJob")
    price_table = usage.load_prices(prices)
    usage.check_prices(price_table, gpus=job.spec.scaling.gpus, where=f"run {job.name}")
    logs = job.run_uri().join(LOGS_DIR)
    with ship_output(filesystem_for(logs), logs.fs_path, "driver"), usage.pricing(price_table):
        _run(job, spec, verbose=verbose, force=force, output=output)


def _run(job, spec: Path, *, verbose: bool, force: bool, output: Output) -> None:

    s = job.spec
    progress = progress_console(output)
    progress.print(
        f"[bold]{job.name}[/]: {s.model.recipe or s.model.entrypoint}, "
        f"{s.scaling.num_workers} worker(s) {'GPU' if s.scaling.use_gpu else 'CPU'}, "
        f"{job.epochs_planned()} epochs -> {job.run_uri()}",
        highlight=False,
    )
    with stdout_for_json(output), TrainProgress(job.epochs_planned(), progress) as view:
        result = run_train_job(
            job,
            on_event=view,
            sys_path=[str(spec.resolve().parent)],
            verbose=verbose,
            force=force,
        )
    used = _recorded_usage(job)
    if output is Output.json:
        return print_json({**run_doc(result), "usage": used})
    final = f"; final epoch {result.epoch + 1}" if result.epoch is not None else ""
    console.print(
        f"[green]done[/] in {result.elapsed_s:.1f}s ({result.attempts} attempt(s)){final}:",
        highlight=False,
    )
    for key, value in result.metrics.items():
        if key != "epoch":
            console.print(
                f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}"
            )
    console.print(
        f"checkpoint: {result.checkpoint_uri or 'none (the loop reported none)'}",
        highlight=False,
    )
    if used:
        for line in summary(used):
            console.print(f"usage: {line}", highlight=False)


def _recorded_usage(job) -> dict[str, Any] | None:
    """The usage the run record holds now (written with the run's final status)."""

    uri = job.run_uri()
    return (record.read(filesystem_for(uri), uri) or {}).get("usage")


def run_doc(result) -> dict[str, Any]:
    """`rayfleet run -o json`: name, runUri, checkpointUri, epoch (0-based, the last one
    trained), metrics (of that epoch), attempts, elapsedS, skipped (checkpoints passed over
    on resume, with why), startupS (seconds from process start to each start-up
    phase: preflight, ray, worker group, training loop, first step). `run -o json` adds usage
    (the run record's: rayfleet.usage.RunUsage)."""
    return {
        "name": result.name,
        "runUri": str(result.run_uri),
        "checkpointUri": result.checkpoint_uri,
        "epoch": result.epoch,
        "metrics": {k: v for k, v in result.metrics.items() if k != "epoch"},
        "attempts": result.attempts,
        "elapsedS": round(result.elapsed_s, 3),
        "skipped": list(result.skipped),
        "startupS": dict(result.startup),
    }
