import numpy as np
import pyarrow.fs as pafs
import pytest

from rayfleet.data.digits import import_digits
from rayfleet.data.layout import read_info
from rayfleet.data.shards import read_shard, shard_range
from rayfleet.errors import DatasetError
from rayfleet.storage.uri import parse_uri

pytestmark = pytest.mark.unit
LOCAL = pafs.LocalFileSystem()


def test_shard_ranges_are_equal_or_cover_all():
    assert [shard_range(10, r, 3, equal=True) for r in range(3)] == [(0, 3), (3, 6), (6, 9)]
    ranges = [shard_range(10, r, 3, equal=False) for r in range(3)]
    assert ranges[0][0] == 0 and ranges[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_digits_import_and_shards(tmp_path):
    uri = parse_uri(str(tmp_path / "digits"))
    info = import_digits(uri, shards=3)
    assert info.rows == {"train": 1437, "val": 360}
    assert read_info(LOCAL, uri).feature_shape == [1, 8, 8]
    shards = [read_shard(LOCAL, uri, "train", r, 2, [1, 8, 8]) for r in range(2)]
    assert [len(s) for s in shards] == [718, 718]  # equal sizes for DDP
    assert shards[0].features.shape == (718, 1, 8, 8) and shards[0].features.dtype == np.float32
    assert 0.0 <= shards[0].features.min() and shards[0].features.max() <= 1.0
    val = [read_shard(LOCAL, uri, "val", r, 2, [1, 8, 8], equal=False) for r in range(2)]
    assert sum(len(s) for s in val) == 360
    # A re-import with the same seed is identical; shards don't overlap.
    again = read_shard(LOCAL, uri, "train", 0, 2, [1, 8, 8])
    assert np.array_equal(again.features, shards[0].features)


def test_missing_dataset_says_how_to_import(tmp_path):
    with pytest.raises(DatasetError, match="rayfleet data import digits"):
        read_info(LOCAL, parse_uri(str(tmp_path / "none")))
