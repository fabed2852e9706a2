"""`rayfleet data import ...`: put datasets into storage in the layout training reads."""

from __future__ import annotations

import typer

from rayfleet.cli.output import Output, OutputOption, console, handle_errors, print_json
from rayfleet.storage.preflight import preflight
from rayfleet.storage.uri import parse_uri

app = typer.Typer(help="Import datasets into storage.", no_args_is_help=True)
import_app = typer.Typer(help="Import a bundled dataset.", no_args_is_help=True)
app.add_typer(import_app, name="import")


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
    from rayfleet.data.digits import import_digits

    target = parse_uri(uri)
    preflight(target)
    info = import_digits(target, val_fraction=val_fraction, seed=seed, shards=shards)
    if output is Output.json:  # uri, rows {train, val}
        return print_json({"uri": str(target), "rows": dict(info.rows)})
    console.print(
        f"[green]imported[/] digits to {target}: "
        f"{info.rows['train']} train / {info.rows['val']} val rows",
        highlight=False,
    )
