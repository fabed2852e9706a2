"""Read one worker's shard of a Parquet split straight from storage with pyarrow.

Each worker gets a contiguous, equal-sized range of the split's global row order and opens
only the files that overlap it (row counts come from Parquet footers, a small read per file).
Equal sizes matter: DDP needs every rank to take the same number of steps, or the all-reduce
of the rank with more batches waits forever. The order is fixed, so a seeded run reads the
same rows on the same rank every time — the basis of exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayfleet.data.layout import split_files
from rayfleet.lazy import lazy
from rayfleet.storage.uri import StorageURI

pq = lazy("pyarrow.parquet")
pafs = lazy("pyarrow.fs")
pa = lazy("pyarrow")


@dataclass
class Shard:
    features: np.ndarray  # (rows, *feature_shape), float32 (int64 for text token ids)
    labels: np.ndarray  # (rows,), int64

    def __len__(self) -> int:
        return len(self.labels)


def _stored_dtype(fs: pafs.FileSystem, path: str) -> str:
    """The dtype a file stores: int64 for integer values (token ids), else float32."""
    with fs.open_input_file(path) as f:
        value_type = pq.ParquetFile(f).schema_arrow.field("features").type.value_type
    return "int64" if pa.types.is_integer(value_type) else "float32"


def shard_range(total: int, rank: int, world: int, *, equal: bool) -> tuple[int, int]:
    """Row range [start, stop) of `rank`: equal sizes (dropping the remainder) or all rows."""
    if equal:
        size = total // world
        return rank * size, (rank + 1) * size
    bounds = np.linspace(0, total, world + 1).astype(int)
    return int(bounds[rank]), int(bounds[rank + 1])


def read_shard(
    fs: pafs.FileSystem,
    dataset: StorageURI,
    split: str,
    rank: int,
    world: int,
    feature_shape: list[int],
    *,
    equal: bool = True,
    feature_dtype: str | None = None,
) -> Shard:
    """This rank's rows of `split`. `equal=False` keeps every row (for evaluation).

    Features come back as float32, or int64 when the dataset stores int64 (text token ids):
    `feature_dtype` (from dataset.json) decides; without it, the Parquet column's type does.
    """
    files = split_files(fs, dataset, split)
    counts = []
    for path in files:
        with fs.open_input_file(path) as f:
            counts.append(pq.ParquetFile(f).metadata.num_rows)
    start, stop = shard_range(sum(counts), rank, world, equal=equal)
    tables, offset = [], 0
    for path, n in zip(files, counts, strict=True):
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            with fs.open_input_file(path) as f:
                tables.append(pq.read_table(f).slice(lo - offset, hi - lo))
        offset += n
    dtype = np.dtype(feature_dtype or _stored_dtype(fs, files[0]))
    if not tables:
        return Shard(np.zeros((0, *feature_shape), dtype), np.zeros(0, np.int64))
    table = pa.concat_tables(tables)
    flat = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    features = flat.astype(dtype, copy=False).reshape(len(table), *feature_shape)
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)
    return Shard(features, labels)
