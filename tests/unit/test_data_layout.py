"""dataset.json is validated where it is read: a wrong field, or Parquet files that do not
match it, fail in one line naming the field and the file (exit 2), before Ray starts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from rayfleet.data.layout import DatasetInfo, check_files, read_info
from rayfleet.data.shards import read_shard
from rayfleet.data.writer import features_table
from rayfleet.errors import BadInputError, DatasetError
from rayfleet.storage.uri import parse_uri

pytestmark = pytest.mark.unit
LOCAL = pafs.LocalFileSystem()

# A descriptor as today's digits import wrote it before kind/class_names existed.
OLD_DIGITS = {
    "name": "digits",
    "feature_shape": [1, 8, 8],
    "feature_dtype": "float32",
    "num_classes": 10,
    "rows": {"train": 1437, "val": 360},
}
TEXT = {
    "name": "reviews",
    "kind": "text",
    "feature_shape": [4],
    "feature_dtype": "int64",
    "num_classes": 2,
    "class_names": ["neg", "pos"],
    "rows": {"train": 3, "val": 2},
    "vocab": ["<pad>", "<unk>", "good"],
    "tokenizer": "lower-words-v1",
}


def write(tmp_path, doc) -> object:
    uri = parse_uri(str(tmp_path / "ds"))
    (tmp_path / "ds").mkdir(exist_ok=True)
    (tmp_path / "ds" / "dataset.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return uri


def test_old_digits_descriptor_still_reads(tmp_path):
    info = read_info(LOCAL, write(tmp_path, OLD_DIGITS))
    assert info.kind == "image" and info.class_names == [str(i) for i in range(10)]
    assert info.normalization is None and info.vocab is None
    assert DatasetInfo.model_validate_json(info.to_json()) == info  # round trip


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"feature_shape": [1, 0, 8]}, "feature_shape.1"),
        ({"feature_shape": "8x8"}, "feature_shape"),
        ({"feature_shape": []}, "feature_shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"rows": {"train": 10}}, "rows: split 'val' is missing"),
        ({"rows": {"train": 10, "val": 0}}, "rows.val"),
        ({"class_names": ["a", "b"]}, "class_names: 2 names for num_classes=10"),
        ({"kind": "audio"}, "kind"),
        ({"feature_dtype": "int64"}, "feature_dtype: a image dataset stores float32"),
        ({"normalization": {"mean": [0.1, 0.2], "std": [1, 1]}}, "normalization: 2 values"),
        ({"vocab": ["<pad>", "<unk>"]}, "vocab/tokenizer: only text"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_each_bad_field_fails_in_one_line_naming_field_and_file(tmp_path, change, field):
    uri = write(tmp_path, {**OLD_DIGITS, **change})
    with pytest.raises(DatasetError) as err:
        read_info(LOCAL, uri)
    message = str(err.value)
    assert field in message and str(tmp_path / "ds" / "dataset.json") in message
    assert "\n" not in message and isinstance(err.value, BadInputError)


def test_text_descriptor_needs_vocab_and_tokenizer(tmp_path):
    assert read_info(LOCAL, write(tmp_path, TEXT)).vocab[:2] == ["<pad>", "<unk>"]
    for change, field in (({"vocab": ["good"]}, "vocab"), ({"tokenizer": None}, "tokenizer")):
        with pytest.raises(DatasetError, match=field):
            read_info(LOCAL, write(tmp_path, {**TEXT, **change}))


def test_not_json_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="dataset.json: not valid JSON"):
        read_info(LOCAL, write(tmp_path, "{oops"))


def _parts(tmp_path, doc, table_for):
    uri = write(tmp_path, doc)
    for split in ("train", "val"):
        (tmp_path / "ds" / split).mkdir(exist_ok=True)
        pq.write_table(
            table_for(doc["rows"][split]), tmp_path / "ds" / split / "part-00000.parquet"
        )
    return uri


def test_check_files_accepts_matching_parts_and_int64_text(tmp_path):
    def table(n):
        return features_table(np.ones((n, 4), np.int64), np.zeros(n, np.int64))

    uri = _parts(tmp_path, TEXT, table)
    info = read_info(LOCAL, uri)
    check_files(LOCAL, uri, info)
    shard = read_shard(LOCAL, uri, "train", 0, 1, info.feature_shape, equal=False)
    assert shard.features.dtype == np.int64 and shard.features.shape == (3, 4)


@pytest.mark.parametrize(
    ("table_for", "message"),
    [
        (lambda n: features_table(np.ones((n, 63), np.float32), np.zeros(n, np.int64)),
         "features have length 63"),
        (lambda n: features_table(np.ones((n, 64), np.float64), np.zeros(n, np.int64)),
         "features are double but dataset.json feature_dtype is float32"),
        (lambda n: pa.table({"features": features_table(np.ones((n, 64), np.float32),
                                                        np.zeros(n)).column("features")}),
         "no 'label' column"),
        (lambda n: features_table(np.ones((n + 1, 64), np.float32), np.zeros(n + 1, np.int64)),
         "has 1438 rows but dataset.json rows.train says 1437"),
    ],
)  # fmt: skip
def test_check_files_names_the_mismatching_file(tmp_path, table_for, message):
    uri = _parts(tmp_path, OLD_DIGITS, table_for)
    with pytest.raises(DatasetError, match=message) as err:
        check_files(LOCAL, uri, read_info(LOCAL, uri))
    assert "\n" not in str(err.value) and "ds" in str(err.value)
