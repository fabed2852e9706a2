"""The on-storage layout of a dataset and its descriptor.

    <dataset>/dataset.json           name, feature shape and dtype, classes, row counts
    <dataset>/train/part-00000.parquet ...
    <dataset>/val/part-00000.parquet ...

Each Parquet file has a `features` column (fixed-size list of float32, the flattened
example) and a `label` column (int64). The descriptor lets training and serving learn the
input signature without reading data.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pyarrow.fs as pafs

from rayfleet.errors import DatasetError
from rayfleet.storage.filesystem import read_bytes
from rayfleet.storage.uri import StorageURI

DESCRIPTOR = "dataset.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    feature_shape: list[int]
    feature_dtype: str
    num_classes: int
    rows: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def read_info(fs: pafs.FileSystem, uri: StorageURI) -> DatasetInfo:
    """Read a dataset's descriptor, or say how to create the dataset."""
    try:
        doc = json.loads(read_bytes(fs, uri.join(DESCRIPTOR).fs_path))
    except FileNotFoundError:
        raise DatasetError(
            f"dataset {uri}: no {DESCRIPTOR} found; import one with "
            f"`rayfleet data import digits {uri}` or fix spec.dataset"
        ) from None
    except ValueError:
        raise DatasetError(f"dataset {uri}: {DESCRIPTOR} is not valid JSON; re-import it") from None
    try:
        return DatasetInfo(**doc)
    except TypeError:
        raise DatasetError(
            f"dataset {uri}: {DESCRIPTOR} has unexpected fields; re-import it"
        ) from None


def split_files(fs: pafs.FileSystem, uri: StorageURI, split: str) -> list[str]:
    """Sorted Parquet file paths of one split; DatasetError when there are none."""
    selector = pafs.FileSelector(uri.join(split).fs_path, allow_not_found=True)
    files = sorted(
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.path.endswith(".parquet")
    )
    if not files:
        raise DatasetError(
            f"dataset {uri}: split {split!r} has no .parquet files; re-import the dataset"
        )
    return files
