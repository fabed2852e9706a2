"""`rayfleet data import SOURCE DEST`: put datasets into storage in the layout training reads.

SOURCE is `digits` (the bundled dataset, its own subcommand as before) or anything else:
a CSV/Parquet file or folder, or an image folder. `import` is a group whose unknown first
word routes to the hidden `source` command, so `data import digits DEST` and
`data import ./data.csv DEST --label y` both read naturally.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from rayfleet.cli.options import with_flags
from rayfleet.cli.output import Output, OutputOption, console, print_json
from rayfleet.data.options import IMPORT_FLAGS, SPLIT_FLAGS, ImportOptions
from rayfleet.flags import options_from
from rayfleet.lazy import lazy
from rayfleet.storage.preflight import preflight
from rayfleet.storage.uri import parse_uri

# The work, imported when a command runs: scikit-learn (digits), pandas and pyarrow (imports).
digits = lazy("rayfleet.data.digits")
imports = lazy("rayfleet.data.imports")


class _SourceGroup(TyperGroup):
    """`import digits ...` runs `digits`; `import <anything else> ...` runs `source`."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["source", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(help="Import datasets into storage.", no_args_is_help=True)
import_app = typer.Typer(
    cls=_SourceGroup,
    no_args_is_help=True,
    help=(
        "Import a dataset: `import SOURCE DEST --option ...`. SOURCE is `digits`, a CSV or "
        "Parquet file or folder (--label COLUMN; --text COLUMN for text), or an image folder "
        "with one sub-folder per class; local paths or s3://. See `import source --help`."
    ),
)
app.add_typer(import_app, name="import")


def _result(target, info, output: Output) -> None:
    if output is Output.json:  # uri, kind, rows {train, val}, numClasses
        return print_json(
            {
                "uri": str(target),
                "kind": info.kind,
                "rows": dict(info.rows),
                "numClasses": info.num_classes,
            }
        )
    console.print(
        f"[green]imported[/] {info.name} ({info.kind}, {info.num_classes} classes) to {target}: "
        f"{info.rows['train']} train / {info.rows['val']} val rows",
        highlight=False,
    )


@import_app.command("digits")
@with_flags(SPLIT_FLAGS)
def import_digits_cmd(
    uri: str = typer.Argument(..., help="Destination: s3://bucket/datasets/digits or a path."),
    shards: int = typer.Option(4, min=1, max=64, help="Parquet files in the train split."),
    output: Output = OutputOption,
    **split: Any,
) -> None:
    """Write scikit-learn's handwritten digits as Parquet shards (train/val) to URI."""
    target = parse_uri(uri)
    preflight(target)
    info = digits.import_digits(target, shards=shards, **split)
    _result(target, info, output)


@import_app.command("source", hidden=True)
@with_flags(IMPORT_FLAGS)
def import_source_cmd(
    source: str = typer.Argument(
        ..., help="CSV/Parquet file or folder, or an image folder (one sub-folder per class)."
    ),
    dest: str = typer.Argument(..., help="Destination: s3://bucket/datasets/NAME or a path."),
    output: Output = OutputOption,
    **values: Any,
) -> None:
    """Import your own table, text or image folder into DEST as train/val Parquet parts."""
    target = parse_uri(dest)  # preflight runs inside, once SOURCE and DEST are checked
    options = options_from(ImportOptions, IMPORT_FLAGS, values)
    info = imports.import_source(source, target, options)
    _result(target, info, output)
