"""Options and argument shapes shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

SetOption = typer.Option(
    None, "--set", help="Override a spec field: key.path=value (repeatable), e.g. spec.run.epochs=3"
)
VerboseOption = typer.Option(
    False, "--verbose", "-v", help="Show the logs of Ray and its workers (trials, replicas)."
)
PricesOption = typer.Option(
    None,
    "--prices",
    help="Price table (YAML/JSON: $/CPU-hour, $/GPU-hour per accelerator, spot and on-demand) "
    "to record cost with usage; default $RAYFLEET_PRICES. See the README, 'Usage and cost'.",
)


class SpecOrCommand(TyperGroup):
    """A group whose first argument is a subcommand or a spec file: `rayfleet sweep SPEC` runs
    the hidden `start` command, `rayfleet sweep results NAME` the subcommand. A word that names
    both a subcommand and an existing file is the file (pass `./status` or not: both work)."""

    default_command = "start"

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-"):
            first = args[0]
            if first not in self.commands or Path(first).is_file():
                args = [self.default_command, *args]
        return super().parse_args(ctx, args)
