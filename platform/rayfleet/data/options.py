"""What `rayfleet data import SOURCE DEST` takes besides SOURCE and DEST, declared once.

Each field is its own flag (rayfleet.flags): `data import source` builds its options from
these fields, `data import digits` takes the ones it shares (the split's seed and val share),
and a library caller (`import_source(src, dest, ImportOptions(label="y"))`) is checked
against the same bounds. Pure: the import itself (pyarrow, pandas, PIL) is data.imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayfleet.errors import DatasetError
from rayfleet.flags import check_bounds, flags_of, option


def parse_size(value: str | None) -> tuple[int, int] | None:
    """Parse --size: "32x32" -> (32, 32), height x width."""
    if value is None:
        return None
    h, sep, w = value.lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) < 1 or int(w) < 1:
        raise DatasetError(f"--size {value!r}: use HxW with positive whole numbers, e.g. 32x32")
    return int(h), int(w)


def parse_columns(value: str) -> list[str] | None:
    """Parse --features: "a, b,c" -> ["a", "b", "c"] (none named: every column)."""
    return [name.strip() for name in value.split(",") if name.strip()] or None


@dataclass(frozen=True)
class ImportOptions:
    label: str | None = option(None, "Label column (tables and text).")
    features: list[str] | None = option(
        None,
        "Feature columns, comma-separated (default: every column but the label).",
        parse=parse_columns,
    )
    text: str | None = option(None, "Text column: makes a text dataset.")
    vocab_size: int = option(20_000, "Text: vocabulary entries in all.", minimum=3)
    max_length: int = option(128, "Text: token ids per example.", minimum=1)
    size: tuple[int, int] | None = option(
        None, "Images: HxW (default: the first image's).", parse=parse_size
    )
    val_fraction: float = option(0.2, "Share of rows for val.", minimum=0.05, maximum=0.5)
    seed: int = option(0, "Seed of the stratified train/val split.")
    shards: int | None = option(
        None,
        "Parquet files in the train split (default: ~64 MB each).",
        minimum=1,
        maximum=4096,
    )
    name: str | None = option(None, "Dataset name (default: SOURCE's file name).")
    overwrite: bool = option(False, "Replace a dataset already at DEST.")

    def __post_init__(self) -> None:
        check_bounds(self)


IMPORT_FLAGS = flags_of(ImportOptions)
SPLIT_FLAGS = tuple(f for f in IMPORT_FLAGS if f.field in ("val_fraction", "seed"))
"""What `data import digits` shares with every import: how rows are split."""
