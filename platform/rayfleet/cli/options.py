"""Options and argument shapes shared by several commands, declared once.

A flag name means one thing across `rayfleet`: `--token-file` is the Ray auth token
(`--serve-token-file` is Serve's bearer token), `--context` a named Ray cluster (kubectl
rayfleet's kubeconfig context is `--kube-context`), `--storage` a storage root or URI.
tests/unit/test_cli_flags.py holds every shared flag to one meaning.
"""

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


# The Ray cluster a command talks to (submit, jobs, doctor).
AddressOption = typer.Option(
    None, "--address", help="Ray dashboard URL (http://HEAD:8265); default: RAY_ADDRESS."
)
ContextOption = typer.Option(None, "--context", help="A named cluster from the config file.")
TokenFileOption = typer.Option(
    None,
    "--token-file",
    help="Ray auth token file; default: the context's tokenFile, else RAY_AUTH_TOKEN(_PATH).",
)
InsecureOption = typer.Option(
    False,
    "--insecure",
    help="Allow sending the auth token over plain http to a host that is not this machine.",
)

# Where stored runs, sweeps and datasets are found (plot, evaluate, compress, sweep results).
StorageOption = typer.Option(
    None, "--storage", help="Storage root; default $RAYFLEET_STORAGE or ~/.rayfleet/store."
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
