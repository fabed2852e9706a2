"""Import scikit-learn's bundled handwritten digits as Parquet shards.

Real data that ships inside a package (no download), small enough for a laptop quickstart:
1,797 8x8 grey images of the digits 0-9. Pixels are scaled to [0, 1] at import time so every
reader sees the same floats. The train/val split is stratified with a fixed seed, so every
import of the same seed produces byte-identical shards.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayfleet.data.layout import DESCRIPTOR, DatasetInfo
from rayfleet.storage.filesystem import filesystem_for, write_bytes
from rayfleet.storage.uri import StorageURI

FEATURE_SHAPE = [1, 8, 8]


def _table(features: np.ndarray, labels: np.ndarray) -> pa.Table:
    flat = pa.array(features.astype(np.float32).reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(FEATURE_SHAPE)))
    return pa.table({"features": column, "label": pa.array(labels.astype(np.int64))})


def import_digits(
    uri: StorageURI, *, val_fraction: float = 0.2, seed: int = 0, shards: int = 4
) -> DatasetInfo:
    """Write digits to `uri` as train/ and val/ Parquet shards plus dataset.json (last)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, random_state=seed, stratify=y
    )
    fs = filesystem_for(uri)
    rows = {}
    for split, xs, ys, n_files in (
        ("train", x_train, y_train, shards),
        ("val", x_val, y_val, max(1, shards // 2)),
    ):
        rows[split] = len(ys)
        fs.create_dir(uri.join(split).fs_path, recursive=True)
        for i, idx in enumerate(np.array_split(np.arange(len(ys)), n_files)):
            path = uri.join(split, f"part-{i:05d}.parquet").fs_path
            with fs.open_output_stream(path) as sink:
                pq.write_table(_table(xs[idx], ys[idx]), sink)
    info = DatasetInfo(
        name="digits",
        feature_shape=FEATURE_SHAPE,
        feature_dtype="float32",
        num_classes=10,
        rows=rows,
    )
    # The descriptor goes last: a dataset without one is an unfinished import.
    write_bytes(fs, uri.join(DESCRIPTOR).fs_path, info.to_json().encode())
    return info
