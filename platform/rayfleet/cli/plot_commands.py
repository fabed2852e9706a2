"""`rayfleet plot (--run NAME | --sweep NAME) --out FILE.png`: figures from storage alone.

Reads the run record (`<storage>/runs/NAME/record.json`) or the sweep's table and its trials'
run records (`<storage>/sweeps/NAME/...`): no cluster, no Ray, no MLflow. matplotlib is
imported only when a plot is drawn (rayfleet.plots).
"""

from __future__ import annotations

from pathlib import Path

import typer

from rayfleet import plots, record
from rayfleet.cli.options import StorageOption
from rayfleet.cli.output import Output, OutputOption, console, handle_errors, print_json
from rayfleet.errors import JobNotFoundError, SpecError
from rayfleet.specs.base import resolve_storage
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.tune.results import require_results
from rayfleet.tune.trial import trial_run_uri


@handle_errors
def plot(
    run: str | None = typer.Option(None, "--run", help="A run's learning curves."),
    sweep: str | None = typer.Option(
        None, "--sweep", help="A sweep: metric vs each searched parameter, every trial's curve."
    ),
    out: Path = typer.Option(..., "--out", help="The PNG file to write."),
    storage: str | None = StorageOption,
    output: Output = OutputOption,
) -> None:
    """Plot a run's learning curves or a sweep's results as a PNG."""
    if (run is None) == (sweep is None):
        raise SpecError("give exactly one of --run NAME or --sweep NAME")
    if out.suffix.lower() != ".png":
        raise SpecError(f"--out {out}: write a .png file (e.g. --out {out.with_suffix('.png')})")

    root = resolve_storage(storage)
    if run is not None:
        fig, what = plots.run_figure(_run_record(root, run)), f"run {run}"
    else:
        fig, what = _sweep_figure(root, sweep), f"sweep {sweep}"
    plots.save(fig, out)
    if output is Output.json:
        return print_json({"plotted": what, "out": str(out)})
    console.print(f"{what} -> {out}", highlight=False)


def _run_record(root, name: str):

    uri = root.join("runs", name)
    doc = record.read(filesystem_for(uri), uri)
    if doc is None:
        raise JobNotFoundError(
            f"no run {name!r} at {uri} (no record.json); check the name and --storage"
        )
    parsed = record.RunRecord.model_validate(doc)
    if not parsed.epochs:
        raise JobNotFoundError(f"run {name!r} at {uri} has no finished epoch yet: nothing to plot")
    return parsed


def _sweep_figure(root, name: str):

    uri = root.join("sweeps", name)
    table, best = require_results(uri, name)
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in table.trials:
        trial_uri = trial_run_uri(uri, row.trial_id)
        doc = record.read(filesystem_for(trial_uri), trial_uri)
        if doc is None:
            continue
        parsed = record.RunRecord.model_validate(doc)
        points = {
            e.epoch: float(e.metrics[table.metric])
            for e in parsed.epochs
            if isinstance(e.metrics.get(table.metric), (int, float))
        }
        curves[row.trial_id] = sorted(points.items())
    space = record.job_spec(uri).get("searchSpace") or {}
    log_params = [key for key, dist in space.items() if "loguniform" in (dist or {})]
    return plots.sweep_figure(
        table, curves, best_trial=best.trial_id if best else None, log_params=log_params
    )
