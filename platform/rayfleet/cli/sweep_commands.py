"""`rayfleet sweep SPEC [--resume]` and `rayfleet sweep results NAME`.

`sweep` is a group whose first argument is either a subcommand (`results`) or a spec file,
so the common case reads like `rayfleet run`: `rayfleet sweep jobs/digits/sweep.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from typer.core import TyperGroup

from rayfleet.cli.output import console, handle_errors
from rayfleet.cli.spec_commands import SetOption
from rayfleet.specs import load_spec
from rayfleet.specs.base import resolve_storage
from rayfleet.tune.documents import BestTrial, SweepTable


class _SpecOrCommand(TyperGroup):
    """Treat `rayfleet sweep SPEC ...` as `rayfleet sweep start SPEC ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_SpecOrCommand,
    help="Hyperparameter sweeps (Ray Tune): `rayfleet sweep SPEC [--resume]`, "
    "`rayfleet sweep results NAME`.",
    no_args_is_help=True,
)

_STYLE = {"DONE": "green", "STOPPED": "yellow", "ERROR": "red", "RUNNING": "cyan"}


def render_table(table: SweepTable, best: BestTrial | None = None) -> Table:
    """The trial table: params, epochs run, the metric, and state; the best row marked."""
    out = Table(
        title=f"sweep {table.sweep}: {table.mode} {table.metric}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption_justify="left",
    )
    params = list(table.trials[0].params) if table.trials else []
    out.add_column("trial", no_wrap=True)
    for key in params:
        out.add_column(_short(key, params), justify="right")
    out.add_column("epochs", justify="right")
    out.add_column(table.metric, justify="right")
    out.add_column("state", no_wrap=True)
    best_id = best.trial_id if best else None
    for row in table.trials:
        state = f"[{_STYLE.get(row.state, 'white')}]{row.state}[/]"
        if row.trial_id == best_id:
            state += " [bold]best[/]"
        if row.error:
            state += f" {row.error}"
        out.add_row(
            row.trial_id,
            *[_fmt(row.params.get(k)) for k in params],
            f"{row.epochs_done}/{table.epochs}",
            _fmt(row.value),
            state,
        )
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(table.counts().items()))
    out.caption = f"{counts}; {table.epochs_consumed} epochs trained"
    return out


def _short(key: str, keys: list[str]) -> str:
    """A column header: the last part of a dotted key, unless two keys share it."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class _LiveTable:
    """A live table on a terminal; elsewhere one line per trial that reaches a final state."""

    def __init__(self, con: Console):
        self.console = con
        self.live = Live(console=con, auto_refresh=False) if con.is_terminal else None
        self.reported: set[tuple[str, str]] = set()

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def __call__(self, table) -> None:
        if self.live:
            self.live.update(render_table(table), refresh=True)
            return
        for row in table.trials:
            key = (row.trial_id, row.state)
            if row.state not in ("DONE", "STOPPED", "ERROR") or key in self.reported:
                continue
            self.reported.add(key)
            params = " ".join(f"{k}={_fmt(v)}" for k, v in row.params.items())
            self.console.print(
                f"trial {row.trial_id} {row.state.lower()} after {row.epochs_done}/"
                f"{table.epochs} epochs: {table.metric}={_fmt(row.value)}  {params}",
                highlight=False,
                soft_wrap=True,
            )


@app.command("start", hidden=True)
@handle_errors
def start(
    spec: Path = typer.Argument(..., help="SweepJob spec YAML file."),
    overrides: list[str] = SetOption,
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue a sweep from its trials.json and verified checkpoints (never from "
        "Tune's pickled state): finished trials are kept, unfinished ones rerun with the same "
        "params, missing ones sampled anew.",
    ),
    retry_errored: bool = typer.Option(
        False, "--retry-errored", help="With --resume: run errored trials again."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray and trial logs."),
) -> None:
    """Run a SweepJob: every trial a data-parallel TrainJob, the best one recorded."""
    from rayfleet.tune.runner import run_sweep
    from rayfleet.tune.space import prepare

    sweep = load_spec(spec, overrides or [], expect="SweepJob")
    prep = prepare(sweep, source_dir=spec.resolve().parent)
    s = sweep.spec
    console.print(
        f"[bold]{sweep.name}[/]: {s.num_samples} trial(s) of {prep.base.name} "
        f"({s.search.algorithm} search, {s.scheduler.type} scheduler, {s.mode} {s.metric}) "
        f"-> {prep.uri}",
        highlight=False,
    )
    with _LiveTable(console) as view:
        result = run_sweep(
            prep,
            resume=resume,
            retry_errored=retry_errored,
            on_table=view,
            sys_path=[str(spec.resolve().parent)],
            verbose=verbose,
        )
    _print_outcome(result.table, result.best)
    console.print(f"done in {result.elapsed_s:.1f}s", highlight=False)


def _print_outcome(table: SweepTable, best: BestTrial | None) -> None:
    console.print(render_table(table, best))
    if best:
        params = " ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        console.print(
            f"best: trial {best.trial_id} {best.metric}={_fmt(best.value)}  {params}",
            highlight=False,
            soft_wrap=True,
        )
        console.print(f"checkpoint: {best.checkpoint}", highlight=False, soft_wrap=True)


@app.command("results")
@handle_errors
def show_results(
    name: str = typer.Argument(..., help="The sweep's metadata.name."),
    storage: str = typer.Option(
        None, "--storage", help="Storage URI the sweep ran in (default: $RAYFLEET_STORAGE)."
    ),
) -> None:
    """Print a sweep's trial table and best trial, from storage alone."""
    from rayfleet.tune.results import require_results

    uri = resolve_storage(storage).join("sweeps", name)
    table, best = require_results(uri, name)
    _print_outcome(table, best)
