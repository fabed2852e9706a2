"""`rayfleet data import SOURCE DEST`: put datasets into storage in the layout training reads.

SOURCE is `digits` (the bundled dataset, its own subcommand as before) or anything else:
a CSV/Parquet file or folder, or an image folder. `import` is a group whose unknown first
word routes to the hidden `source` command, so `data import digits DEST` and
`data import ./data.csv DEST --label y` both read naturally.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from rayfleet.cli.output import Output, OutputOption, console, handle_errors, print_json
from rayfleet.lazy import lazy
from rayfleet.storage.preflight import preflight
from rayfleet.storage.uri import parse_uri

# The work, imported when a command runs: scikit-learn (digits), pandas and pyarrow (imports).
digits = lazy("rayfleet.data.digits")
images = lazy("rayfleet.data.images")
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
@handle_errors
def import_digits_cmd(
    uri: str = typer.Argument(..., help="Destination: s3://bucket/datasets/digits or a path."),
    seed: int = typer.Option(0, help="Seed of the stratified train/val split."),
    val_fraction: float = typer.Option(0.2, min=0.05, max=0.5, help="Share of rows for val."),
    shards: int = typer.Option(4, min=1, max=64, help="Parquet files in the train split."),
    output: Output = OutputOption,
) -> None:
    """Write scikit-learn's handwritten digits as Parquet shards (train/val) to URI."""
    target = parse_uri(uri)
    preflight(target)
    info = digits.import_digits(target, val_fraction=val_fraction, seed=seed, shards=shards)
    _result(target, info, output)


@import_app.command("source", hidden=True)
@handle_errors
def import_source_cmd(
    source: str = typer.Argument(
        ..., help="CSV/Parquet file or folder, or an image folder (one sub-folder per class)."
    ),
    dest: str = typer.Argument(..., help="Destination: s3://bucket/datasets/NAME or a path."),
    label: str | None = typer.Option(None, help="Label column (tables and text)."),
    features: str | None = typer.Option(
        None, help="Feature columns, comma-separated (default: every column but the label)."
    ),
    text: str | None = typer.Option(None, help="Text column: makes a text dataset."),
    vocab_size: int = typer.Option(20_000, min=3, help="Text: vocabulary entries in all."),
    max_length: int = typer.Option(128, min=1, help="Text: token ids per example."),
    size: str | None = typer.Option(None, help="Images: HxW (default: the first image's)."),
    val_fraction: float = typer.Option(0.2, min=0.05, max=0.5, help="Share of rows for val."),
    seed: int = typer.Option(0, help="Seed of the stratified train/val split."),
    shards: int | None = typer.Option(
        None, min=1, max=4096, help="Parquet files in the train split (default: ~64 MB each)."
    ),
    name: str | None = typer.Option(None, help="Dataset name (default: SOURCE's file name)."),
    overwrite: bool = typer.Option(False, help="Replace a dataset already at DEST."),
    output: Output = OutputOption,
) -> None:
    """Import your own table, text or image folder into DEST as train/val Parquet parts."""
    target = parse_uri(dest)  # preflight runs inside, once SOURCE and DEST are checked
    options = imports.ImportOptions(
        label=label,
        features=[f.strip() for f in features.split(",") if f.strip()] if features else None,
        text=text,
        vocab_size=vocab_size,
        max_length=max_length,
        size=images.parse_size(size),
        val_fraction=val_fraction,
        seed=seed,
        shards=shards,
        name=name,
        overwrite=overwrite,
    )
    info = imports.import_source(source, target, options)
    _result(target, info, output)
