"""How the CLI talks to people: one-line errors with exit codes, and live training progress."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rayfleet.errors import RayfleetError

# Piped output (CI logs, `| tee`) has no terminal width and rich would squeeze tables into 80
# columns; give it room unless the user set COLUMNS.
_PIPED_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
console = Console(width=_PIPED_WIDTH)
err_console = Console(stderr=True, width=_PIPED_WIDTH)
_state = {"debug": False}


def set_debug(value: bool) -> None:
    _state["debug"] = value


def handle_errors(fn: Callable) -> Callable:
    """Turn RayfleetError into one red line and its exit code; tracebacks only with --debug."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RayfleetError as exc:
            if _state["debug"]:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper


def _fmt(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        if key == "epoch":
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


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
            step = {k: v for k, v in event.items() if k not in ("type", "rank", "step", "steps")}
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
