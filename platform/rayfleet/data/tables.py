"""Import CSV or Parquet (a file or a folder of them) as a table or a text dataset.

The source is streamed in record batches, never loaded whole, in two passes (three for
text): pass 1 reads only the label column (class names and per-class counts, which the
stratified split needs up front) and checks the feature columns; for text a second pass
counts the train split's tokens; the last pass assigns each row to train or val, writes
the parts and accumulates the train split's normalization statistics. Memory is bounded by
a few batches (read ahead on a thread, READ_AHEAD of them), one row group per split and, for
text, the token counts; it does not grow with the file.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayfleet.data import text as text_ids
from rayfleet.data.layout import TOKENIZER, DatasetInfo
from rayfleet.data.split import StratifiedSplit, split_sizes
from rayfleet.data.writer import Moments, Staging
from rayfleet.errors import DatasetError

BATCH_ROWS = 65_536
CSV_BLOCK = 1 << 20  # bytes of CSV parsed at a time (and the longest row; text: 4x)
FILE_BYTES = 64 << 20  # default size of one part file's features
READ_AHEAD = 4  # batches parsed ahead of the one being written
_END = object()


@dataclass(frozen=True)
class TableOptions:
    label: str
    features: list[str] | None = None
    text: str | None = None
    vocab_size: int = 20_000
    max_length: int = 128
    val_fraction: float = 0.2
    seed: int = 0
    shards: int | None = None


@dataclass(frozen=True)
class Source:
    """Files of one format, listed in a fixed (sorted) order: the basis of determinism."""

    fs: pafs.FileSystem
    name: str  # as the user wrote it, for messages
    format: str  # "csv" or "parquet"
    files: list[str]


def _csv_format(types: dict[str, pa.DataType] | None, block: int) -> ds.CsvFileFormat:
    return ds.CsvFileFormat(
        # One parsing thread (the read-ahead thread, beside the writer): errors name the row.
        read_options=pacsv.ReadOptions(block_size=block, use_threads=False),
        convert_options=pacsv.ConvertOptions(column_types=types or {}),
    )


def _dataset(
    source: Source, types: dict[str, pa.DataType] | None = None, block: int = CSV_BLOCK
) -> ds.Dataset:
    fmt = _csv_format(types, block) if source.format == "csv" else "parquet"
    try:
        return ds.dataset(source.files, format=fmt, filesystem=source.fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(
            f"{source.name}: cannot read it as {source.format}: {_first(exc)}"
        ) from None


def _first(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _batches(dataset: ds.Dataset, columns: list[str], source: Source) -> Iterator[pa.RecordBatch]:
    """Record batches in input order; a parse error becomes one line naming the source.

    File by file from Arrow's streaming readers (CSV: one block at a time; Parquet: one row
    group), at most READ_AHEAD batches ahead, never from the dataset scanner: the scanner
    keeps parsing while the caller writes and queues what it parsed, so its memory grew with
    the time the caller lagged behind (a busy machine, smaller blocks: peaks of 384 MiB at
    518 MB and 870 MiB at 2 GB where ~250 MiB suffice): the longer the file, the higher.
    Every file is read with the dataset's schema (the first file's, CSV types pinned), as
    the scanner did: a column missing from a later file reads as empty values."""
    schema = pa.schema([dataset.schema.field(c) for c in columns])
    what = ["it"]  # the file being read, named in the error when the source has several

    def files() -> Iterator[pa.RecordBatch]:
        for path in source.files:
            what[0] = path if len(source.files) > 1 else "it"
            if source.format == "csv":
                yield from _csv_batches(dataset.format, source.fs, path, schema)
            else:
                yield from _parquet_batches(source.fs, path, schema)

    try:
        yield from _read_ahead(files(), READ_AHEAD)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise DatasetError(f"{source.name}: cannot read {what[0]}: {_first(exc)}") from None


def _read_ahead(batches: Iterator[pa.RecordBatch], depth: int) -> Iterator[pa.RecordBatch]:
    """`batches`, produced on a background thread at most `depth` batches ahead of the caller.

    Arrow reads and parses without holding the GIL, so the next batches are parsed while the
    caller works on this one, and no more than `depth` wait: bounded memory, whatever the
    relative speed of reading and writing. An error in the reader is raised here, in order."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_END)
        except BaseException as exc:  # handed to the caller's thread
            put(exc)
        finally:
            batches.close()

    reader = threading.Thread(target=produce, name="rayfleet-read-ahead", daemon=True)
    reader.start()
    try:
        while (item := slots.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _csv_batches(
    fmt: ds.CsvFileFormat, fs: pafs.FileSystem, path: str, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    convert = pacsv.ConvertOptions(
        column_types={f.name: f.type for f in schema},
        include_columns=schema.names,
        include_missing_columns=True,
    )
    with fs.open_input_stream(path) as stream:
        yield from pacsv.open_csv(
            stream,
            read_options=fmt.default_fragment_scan_options.read_options,
            convert_options=convert,
        )


def _parquet_batches(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """One row group read at a time, cut into batches that never span row groups."""
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        present = [n for n in schema.names if n in parquet.schema_arrow.names]
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            table = parquet.read_row_group(group, columns=present)
            for start in range(0, rows, BATCH_ROWS):
                part = table.slice(start, BATCH_ROWS)
                yield pa.RecordBatch.from_arrays(
                    [
                        part.column(f.name).combine_chunks().cast(f.type)
                        if f.name in present
                        else pa.nulls(min(BATCH_ROWS, rows - start), f.type)
                        for f in schema
                    ],
                    schema=schema,
                )
            del table


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _plan_columns(schema: pa.Schema, options: TableOptions, source: Source) -> list[str]:
    """The feature columns (empty for text), after checking that every named column exists."""
    names = schema.names
    listed = ", ".join(names)
    for flag, column in (("--label", options.label), ("--text", options.text)):
        if column is not None and column not in names:
            raise DatasetError(
                f"{source.name}: {flag} column {column!r} does not exist; columns: {listed}"
            )
    if options.text is not None:
        if options.text == options.label:
            raise DatasetError(f"{source.name}: --text and --label name the same column")
        return []
    if options.features:
        unknown = [f for f in options.features if f not in names]
        if unknown:
            raise DatasetError(
                f"{source.name}: --features column(s) {', '.join(unknown)} do not exist; "
                f"columns: {listed}"
            )
        features = list(options.features)
        if options.label in features:
            raise DatasetError(f"{source.name}: --features must not include the label column")
    else:
        features = [n for n in names if n != options.label]
    bad = [f for f in features if not _is_numeric(schema.field(f).type)]
    if bad:
        raise DatasetError(
            f"{source.name}: column(s) {', '.join(bad)} are not numeric; list the numeric "
            "ones with --features a,b,c, or use --text COLUMN for a text dataset"
        )
    if not features:
        raise DatasetError(f"{source.name}: no feature columns besides the label {options.label!r}")
    return features


def _typed_dataset(source: Source, options: TableOptions) -> tuple[ds.Dataset, list[str]]:
    """The dataset with stable column types (CSV types are inferred from the first block,
    so integer features are read as float64 and text as strings, lest a later block fail)."""
    dataset = _dataset(source)
    features = _plan_columns(dataset.schema, options, source)
    if source.format == "csv":
        types = {f: pa.float64() for f in features}
        if options.text is not None:
            types[options.text] = pa.string()
        label_type = dataset.schema.field(options.label).type
        if not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
            types[options.label] = pa.string()
        dataset = _dataset(source, types, CSV_BLOCK * (4 if options.text else 1))
    return dataset, features


def _labels(column: pa.Array, source: Source, label: str) -> pa.Array:
    """Labels as int64 (integral numbers) or strings; a null or fractional label fails."""
    if column.null_count:
        raise DatasetError(f"{source.name}: label column {label!r} has empty values; fill them")
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    if pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        try:
            return column.cast(pa.int64())  # safe cast: 1.0 -> 1, 1.5 fails
        except pa.ArrowInvalid:
            raise DatasetError(
                f"{source.name}: label column {label!r} has fractional values; labels must be "
                "whole numbers or names"
            ) from None
    return column.cast(pa.string())


def _features(batch: pa.RecordBatch, features: list[str], source: Source) -> np.ndarray:
    out = np.empty((batch.num_rows, len(features)), dtype=np.float32)
    for i, name in enumerate(features):
        column = batch.column(name)
        if column.null_count:
            raise DatasetError(
                f"{source.name}: feature column {name!r} has empty values; fill or drop them, "
                "or leave the column out with --features"
            )
        out[:, i] = column.to_numpy(zero_copy_only=False)
    return out


def _rows_per_file(rows: int, row_bytes: int, files: int | None) -> int:
    if files:
        return max(1, math.ceil(rows / files))
    return max(1, FILE_BYTES // max(1, row_bytes))


def import_table(
    source: Source, staging_for, name: str, options: TableOptions
) -> tuple[DatasetInfo, Staging]:
    """Import `source`; `staging_for(rows_per_file)` opens the staging area in DEST.

    Returns the descriptor and the staging area, ready to publish (the caller publishes or
    discards it, so that every failure path cleans up in one place)."""
    dataset, features = _typed_dataset(source, options)
    is_text = options.text is not None

    # Pass 1: class names and per-class counts.
    counts: Counter = Counter()
    for batch in _batches(dataset, [options.label], source):
        labels = _labels(batch.column(options.label), source, options.label)
        for item in pc.value_counts(labels).to_pylist():
            counts[item["values"]] += item["counts"]
    values = sorted(counts)
    if len(values) < 2:
        found = f"only {values[0]!r}" if values else "no rows"
        raise DatasetError(
            f"{source.name}: label column {options.label!r} needs at least 2 classes, found {found}"
        )
    value_set = pa.array(values)
    class_counts = {i: counts[v] for i, v in enumerate(values)}
    train_rows, val_rows = split_sizes(class_counts, options.val_fraction)
    if val_rows == 0:
        raise DatasetError(
            f"{source.name}: the val split would be empty ({sum(class_counts.values())} rows, "
            f"largest class {max(class_counts.values())}); add rows or raise --val-fraction"
        )

    def class_ids(batch: pa.RecordBatch) -> np.ndarray:
        labels = _labels(batch.column(options.label), source, options.label)
        return pc.index_in(labels, value_set=value_set).to_numpy().astype(np.int64)

    columns = [options.label, options.text] if is_text else [options.label, *features]
    vocab: list[str] | None = None
    if is_text:  # pass 2: the train split's vocabulary
        split = StratifiedSplit(class_counts, options.val_fraction, options.seed)
        tokens_seen: Counter = Counter()
        for batch in _batches(dataset, columns, source):
            is_val = split.assign(class_ids(batch))
            train_texts = batch.column(options.text).filter(pa.array(~is_val))
            text_ids.count_tokens(text_ids.tokenize(train_texts), tokens_seen)
        vocab = text_ids.build_vocab(tokens_seen, options.vocab_size)
        vocab_array = pa.array(vocab)
        del tokens_seen

    width = options.max_length if is_text else len(features)
    shards = options.shards
    staging = staging_for(
        {
            "train": _rows_per_file(train_rows, width * 8, shards),
            "val": _rows_per_file(val_rows, width * 8, max(1, shards // 2) if shards else None),
        }
    )
    # last pass: split, write, statistics
    split = StratifiedSplit(class_counts, options.val_fraction, options.seed)
    moments = Moments(width)
    for batch in _batches(dataset, columns, source):
        ids = class_ids(batch)
        is_val = split.assign(ids)
        if is_text:
            x = text_ids.encode(
                text_ids.tokenize(batch.column(options.text)), vocab_array, options.max_length
            )
        else:
            x = _features(batch, features, source)
            moments.add(x[~is_val])
        staging.write("train", x[~is_val], ids[~is_val])
        staging.write("val", x[is_val], ids[is_val])
    info = DatasetInfo(
        name=name,
        kind="text" if is_text else "table",
        feature_shape=[width],
        feature_dtype="int64" if is_text else "float32",
        num_classes=len(values),
        class_names=[str(v) for v in values],
        rows={"train": train_rows, "val": val_rows},
        feature_names=None if is_text else features,
        normalization=None if is_text else moments.result(),
        vocab=vocab,
        tokenizer=TOKENIZER if is_text else None,
    )
    return info, staging
