"""Options and argument shapes shared by several commands, declared once.

A flag name means one thing across `rayfleet`: `--token-file` is the Ray auth token
(`--serve-token-file` is Serve's bearer token), `--context` a named Ray cluster (kubectl
rayfleet's kubeconfig context is `--kube-context`), `--storage` a storage root or URI.
tests/unit/test_cli_flags.py holds every shared flag to one meaning.

Flags that fill an options dataclass are declared on it (rayfleet.flags) and become typer
options through `with_flags`: `rayfleet render` (RenderOptions) and `data import`
(ImportOptions).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from rayfleet.cli.output import handle_errors
from rayfleet.flags import Flag

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


def flag_parameter(flag: Flag) -> inspect.Parameter:
    """A rayfleet.flags Flag as a keyword parameter typer reads as an option."""
    if flag.repeat:
        annotation: Any = list[flag.type]  # type: ignore[name-defined]
        default = typer.Option(None, flag.option, metavar=flag.metavar, help=flag.help)
    else:
        annotation = flag.type if flag.default is not None else flag.type | None
        bounds = {
            key: value
            for key, value in (("min", flag.minimum), ("max", flag.maximum))
            if value is not None
        }
        shown = {} if flag.type is bool else {"metavar": flag.metavar}
        default = typer.Option(flag.default, flag.option, help=flag.help, **shown, **bounds)
    return inspect.Parameter(
        flag.field, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def with_flags(flags: Iterable[Flag]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command with its `**values` replaced by one keyword option per flag
    (typer reads the signature), errors handled as every command's are. The command gets the
    flags' values in `values`, keyed by field name (rayfleet.flags.options_from)."""
    flags = tuple(flags)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)
        fixed = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        command = handle_errors(fn)
        command.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=fixed + [flag_parameter(f) for f in flags]
        )
        return command

    return decorate
