"""How rayfleet's programs talk to people: the consoles and one-line errors with exit codes.

Shared by every command-line program rayfleet installs (`rayfleet`, through cli/output.py,
and `kubectl rayfleet`, k8s/plugin.py), so none of them imports another's command modules.
A RayfleetError becomes one red line on stderr and its exit code (2 bad input, 1 failed
work); a traceback only with `--debug`.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps

from rich.console import Console

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
