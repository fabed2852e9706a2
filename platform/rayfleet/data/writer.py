"""Write a dataset's Parquet parts into a staging prefix and publish it in one step.

Every import writes to `<dest>/.import-<id>/` first and moves the parts into train/ and val/
only after the whole source has been read and checked; dataset.json is written last, so a
crash or a bad row leaves no dataset (a folder without dataset.json is an unfinished import)
and never touches an existing dataset at DEST. Part files roll over every `rows_per_file`
rows and hold row groups of at most ROW_GROUP rows, so memory stays bounded by one batch.
"""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayfleet.data.layout import DESCRIPTOR, SPLITS, DatasetInfo
from rayfleet.errors import DatasetError
from rayfleet.storage.filesystem import write_bytes
from rayfleet.storage.uri import StorageURI

ROW_GROUP = 65_536
BUFFER_BYTES = 16 << 20  # a row group of large examples (images) stops here
STAGING_PREFIX = ".import-"


def features_table(features: np.ndarray, labels: np.ndarray) -> pa.Table:
    """The contract's two columns: fixed-size list `features`, int64 `label`."""
    rows = len(labels)
    flat = features.reshape(rows, -1)
    values = pa.array(flat.reshape(-1), type=pa.from_numpy_dtype(flat.dtype))
    column = pa.FixedSizeListArray.from_arrays(values, flat.shape[1])
    return pa.table({"features": column, "label": pa.array(labels, type=pa.int64())})


class PartWriter:
    """One split's part-00000.parquet, part-00001.parquet ... rolling every `rows_per_file`."""

    def __init__(self, fs: pafs.FileSystem, folder: StorageURI, rows_per_file: int):
        self.fs, self.folder, self.rows_per_file = fs, folder, max(1, rows_per_file)
        self.rows = 0
        self._files = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._in_file = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        fs.create_dir(folder.fs_path, recursive=True)

    def _open(self, schema: pa.Schema) -> None:
        path = self.folder.join(f"part-{self._files:05d}.parquet").fs_path
        self._sink = self.fs.open_output_stream(path)
        # Dictionary encoding only pays for labels; on feature values it is wasted work.
        self._writer = pq.ParquetWriter(self._sink, schema, use_dictionary=["label"])
        self._files += 1
        self._in_file = 0

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def write(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Buffer rows until a row group's worth (ROW_GROUP rows or BUFFER_BYTES), then write."""
        if len(labels) == 0:
            return
        self._buffer.append(features_table(features, labels))
        self._buffered += features.nbytes
        if sum(t.num_rows for t in self._buffer) >= ROW_GROUP or self._buffered >= BUFFER_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer).combine_chunks()
        self._buffer, self._buffered = [], 0
        while table.num_rows:
            if self._writer is None or self._in_file >= self.rows_per_file:
                self._close_file()
                self._open(table.schema)
            take = min(table.num_rows, self.rows_per_file - self._in_file)
            self._writer.write_table(table.slice(0, take), row_group_size=ROW_GROUP)
            self._in_file += take
            self.rows += take
            table = table.slice(take)
        del table
        # Hand the row group's buffers (the concatenation, the encoder's pages) back to the
        # OS now: Arrow's allocator otherwise keeps freed pages resident for a while, and how
        # many depends on timing, so the peak RSS would drift with the run's length.
        pa.default_memory_pool().release_unused()

    def close(self) -> None:
        self._flush()
        self._close_file()

    def abort(self) -> None:
        """Drop what is buffered and close the open part (the caller deletes the parts)."""
        self._buffer, self._buffered = [], 0
        self._close_file()


class Staging:
    """A staging prefix inside DEST: split writers now, publish (or discard) at the end."""

    def __init__(self, fs: pafs.FileSystem, dest: StorageURI, rows_per_file: dict[str, int]):
        self.fs, self.dest = fs, dest
        self.uri = dest.join(f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        self.writers = {
            split: PartWriter(fs, self.uri.join(split), rows_per_file[split]) for split in SPLITS
        }

    def write(self, split: str, features: np.ndarray, labels: np.ndarray) -> None:
        self.writers[split].write(features, labels)

    def discard(self) -> None:
        for writer in self.writers.values():
            try:
                writer.abort()
            except OSError:
                pass
        if _exists(self.fs, self.uri):
            self.fs.delete_dir(self.uri.fs_path)

    def publish(self, info: DatasetInfo) -> None:
        """Replace DEST's train/ and val/ with the staged parts, then write dataset.json."""
        for writer in self.writers.values():
            writer.close()
        rows = {split: w.rows for split, w in self.writers.items()}
        if rows != dict(info.rows):
            raise DatasetError(f"internal: wrote {rows} rows but the descriptor says {info.rows}")
        descriptor = self.dest.join(DESCRIPTOR)
        if _exists(self.fs, descriptor):  # unpublish the old dataset first
            self.fs.delete_file(descriptor.fs_path)
        for split in SPLITS:
            target = self.dest.join(split)
            if _exists(self.fs, target):
                self.fs.delete_dir(target.fs_path)
            staged = self.uri.join(split)
            if isinstance(self.fs, pafs.LocalFileSystem):
                self.fs.move(staged.fs_path, target.fs_path)  # one rename
            else:  # object stores move objects, not prefixes
                self.fs.create_dir(target.fs_path, recursive=True)
                for item in self.fs.get_file_info(pafs.FileSelector(staged.fs_path)):
                    name = item.path.rsplit("/", 1)[-1]
                    self.fs.move(item.path, target.join(name).fs_path)
        self.fs.delete_dir(self.uri.fs_path)
        write_bytes(self.fs, descriptor.fs_path, info.to_json().encode())


def _exists(fs: pafs.FileSystem, uri: StorageURI) -> bool:
    return fs.get_file_info(uri.fs_path).type != pafs.FileType.NotFound


class Moments:
    """Per-column mean and std of a stream of batches (Chan et al.'s parallel merge of
    batch means and sums of squared deviations, in float64: stable for large counts)."""

    def __init__(self, columns: int):
        self.n = 0
        self.mean = np.zeros(columns)
        self.m2 = np.zeros(columns)

    def add(self, x: np.ndarray) -> None:
        """x: (rows, columns) values of one batch."""
        if len(x) == 0:
            return
        x = x.astype(np.float64, copy=False)
        n_b = len(x)
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / n
        self.n = n

    def add_counted(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Merge precomputed batch statistics (images: per channel over many pixels)."""
        if n_b == 0:
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / n
        self.n = n

    def result(self) -> dict[str, list[float]]:
        """{"mean", "std"}; a constant column gets std 1 so (x - mean) / std stays finite."""
        std = np.sqrt(self.m2 / max(self.n, 1))
        std = np.where(std > 1e-12, std, 1.0)
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in std]}
