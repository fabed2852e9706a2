"""How the CLI talks to people and scripts: the one output option (`-o text|json`), the one
table style and live training progress; consoles and one-line errors come from
`rayfleet.console` (shared with `kubectl rayfleet`)."""

from __future__ import annotations

import contextlib
import enum
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rayfleet.console import console, err_console, handle_errors, set_debug

__all__ = [
    "Output",
    "OutputOption",
    "TrainProgress",
    "console",
    "err_console",
    "handle_errors",
    "print_json",
    "print_table",
    "progress_console",
    "set_debug",
    "stdout_for_json",
    "table",
]


class Output(enum.StrEnum):
    """What a command prints on stdout: text for people, or one JSON document for scripts."""

    text = "text"
    json = "json"


OutputOption = typer.Option(
    Output.text,
    "--output",
    "-o",
    case_sensitive=False,
    help="text, or json: one JSON document on stdout (progress and notes go to stderr).",
)


def progress_console(output: Output) -> Console:
    """Where a command's progress goes: stdout for people, stderr when stdout is JSON."""
    return err_console if output is Output.json else console


def stdout_for_json(output: Output) -> contextlib.AbstractContextManager[Any]:
    """Around the work of a command that may print `-o json`: with json, whatever prints to
    sys.stdout meanwhile goes to stderr instead, so stdout is the document alone. Ray prints
    in the driver process (its raylet's worker-pool warnings reach sys.stdout, seen in CI
    ahead of a sweep's JSON)."""
    if output is Output.json:
        return contextlib.redirect_stdout(sys.stderr)
    return contextlib.nullcontext()


def print_json(doc: Any) -> None:
    """One JSON document on stdout (the whole of stdout for `-o json`)."""
    sys.stdout.write(json.dumps(doc, indent=1, default=str) + "\n")
    sys.stdout.flush()


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    caption: str | None = None,
    right: Iterable[str] = (),
) -> Table:
    """Every table the CLI draws: simple heading rule, cells never wrapped, `right` columns
    (numbers) right-aligned; title and caption on the left. Print it with `print_table`."""
    right = set(right)
    out = Table(
        title=title,
        caption=caption,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in columns:
        out.add_column(
            column,
            justify="right" if column in right else "left",
            no_wrap=True,
        )
    for row in rows:
        out.add_row(*row)
    return out


def _fmt(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if key == "epoch":
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def print_table(tbl: Table, con: Console | None = None) -> None:
    """Print a table at its natural width even on a narrow terminal: a cell (a URI, an id)
    is never cut or squeezed; the terminal wraps the long line instead."""
    con = con or console
    natural = Measurement.get(con, con.options.update_width(100_000), tbl).maximum
    if natural > con.width:
        tbl.width = natural
    con.print(tbl, crop=False)


_STEP_FIELDS = ("type", "rank", "at", "step", "steps")


class TrainProgress:
    """Renders launcher events: a live bar on a terminal, one line per epoch otherwise."""

    def __init__(self, epochs: int, con: Console | None = None):
        self.console = con or console
        self.epochs = epochs
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("train", total=None, epoch=0, epochs=epochs, stats="")
        self.last_eval: dict[str, Any] = {}  # the latest epoch's validation metrics

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "step":
            step = {k: v for k, v in event.items() if k not in _STEP_FIELDS}
            stats = _fmt({**step, **self.last_eval})
            self.progress.update(
                self.task,
                completed=event["step"],
                total=event["steps"],
                epoch=event["epoch"] + 1,
                stats=stats,
            )
        elif kind == "epoch":
            self.last_eval = {k: v for k, v in event["metrics"].items() if k.startswith("val_")}
            line = f"epoch {event['epoch'] + 1}/{event['epochs']}  {_fmt(event['metrics'])}"
            self.progress.console.print(line, highlight=False)
        elif kind == "log":
            self.progress.console.print(f"[cyan]{event['message']}[/]", highlight=False)
        elif kind == "phase":  # start-up: one live line on a terminal, a line per phase else
            note = f"starting: {event['phase']} ({event['elapsedS']:.1f} s)"
            if self.live:
                self.progress.update(self.task, stats=note)
            else:
                self.progress.console.print(note, style="dim", highlight=False)
