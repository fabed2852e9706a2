"""The on-storage layout of a dataset and its descriptor.

    <dataset>/dataset.json           DatasetInfo: kind, feature shape and dtype, classes, rows
    <dataset>/train/part-00000.parquet ...
    <dataset>/val/part-00000.parquet ...

Each Parquet file has a `features` column (fixed-size list, the flattened example: float32,
or int64 token ids for text) and a `label` column (int64 in [0, num_classes)). The descriptor
lets training and serving learn the input signature without reading data, and is validated
here so that a wrong one fails in preflight, in one line, before Ray starts.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from rayfleet.errors import DatasetError
from rayfleet.lazy import lazy
from rayfleet.storage.filesystem import read_bytes
from rayfleet.storage.uri import StorageURI

pafs = lazy("pyarrow.fs")
pa = lazy("pyarrow")

DESCRIPTOR = "dataset.json"
SPLITS = ("train", "val")
PAD, UNK = "<pad>", "<unk>"
TOKENIZER = "lower-words-v1"


class Normalization(BaseModel):
    """Per-feature (tables) or per-channel (images) statistics of the train split; stored
    values stay raw and recipes apply (x - mean) / std themselves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        return self


class DatasetInfo(BaseModel):
    """dataset.json (keys snake_case, as digits datasets written before `kind` existed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Literal["image", "table", "text"] = "image"
    feature_shape: list[PositiveInt] = Field(min_length=1)
    feature_dtype: Literal["float32", "int64"] = "float32"
    num_classes: int = Field(ge=2)
    class_names: list[str] | None = None  # absent in old files: "0", "1", ...
    rows: dict[Literal["train", "val"], PositiveInt]
    feature_names: list[str] | None = None
    normalization: Normalization | None = None
    vocab: list[str] | None = None
    tokenizer: Literal["lower-words-v1"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_class_names(cls, data):
        if isinstance(data, dict) and data.get("class_names") is None:
            n = data.get("num_classes")
            if isinstance(n, int) and n >= 2:
                data = {**data, "class_names": [str(i) for i in range(n)]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DatasetInfo:
        missing = [s for s in SPLITS if s not in self.rows]
        if missing:
            raise ValueError(f"rows: split {missing[0]!r} is missing (need train and val)")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names: {len(self.class_names)} names for num_classes={self.num_classes}"
            )
        size = self.feature_size
        if self.kind == "image" and len(self.feature_shape) != 3:
            raise ValueError(f"feature_shape: image needs [C, H, W], got {self.feature_shape}")
        want_dtype = "int64" if self.kind == "text" else "float32"
        if self.feature_dtype != want_dtype:
            raise ValueError(f"feature_dtype: a {self.kind} dataset stores {want_dtype}")
        if self.feature_names is not None and len(self.feature_names) != size:
            raise ValueError(f"feature_names: {len(self.feature_names)} names for {size} features")
        if self.normalization is not None:
            want = self.feature_shape[0] if self.kind == "image" else size
            if len(self.normalization.mean) != want:
                raise ValueError(
                    f"normalization: {len(self.normalization.mean)} values, "
                    f"a {self.kind} dataset needs {want}"
                )
        if self.kind == "text":
            if not self.vocab or self.vocab[:2] != [PAD, UNK]:
                raise ValueError(f"vocab: a text dataset needs one starting {PAD!r}, {UNK!r}")
            if self.tokenizer is None:
                raise ValueError(f"tokenizer: a text dataset needs one ({TOKENIZER!r})")
        elif self.vocab is not None or self.tokenizer is not None:
            raise ValueError(f"vocab/tokenizer: only text datasets have them (kind {self.kind})")
        return self

    @property
    def feature_size(self) -> int:
        """Length of the flattened `features` list (the product of feature_shape)."""
        return math.prod(self.feature_shape)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True)


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def parse_info(text: str | bytes, where: str) -> DatasetInfo:
    """Validate a descriptor's text; DatasetError naming the field and `where` otherwise."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise DatasetError(f"{where}: not valid JSON; re-import the dataset") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{where}: must be a JSON object; re-import the dataset")
    try:
        return DatasetInfo.model_validate(doc)
    except ValidationError as exc:
        raise DatasetError(f"{where}: {_one_line(exc)}; fix it or re-import the dataset") from None


def read_info(fs: pafs.FileSystem, uri: StorageURI) -> DatasetInfo:
    """Read and validate a dataset's descriptor, or say how to create the dataset."""
    path = uri.join(DESCRIPTOR)
    try:
        text = read_bytes(fs, path.fs_path)
    except FileNotFoundError:
        raise DatasetError(
            f"dataset {uri}: no {DESCRIPTOR} found; import one with "
            f"`rayfleet data import digits {uri}` (or a CSV/Parquet/image folder) "
            "or fix spec.dataset"
        ) from None
    return parse_info(text, str(path))


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


def check_files(fs: pafs.FileSystem, uri: StorageURI, info: DatasetInfo) -> None:
    """Check every split file's Parquet schema and row count against the descriptor, reading
    only footers (cheap even on S3), so a mismatch fails in preflight, not inside a worker."""
    import pyarrow.parquet as pq

    value_type = pa.int64() if info.feature_dtype == "int64" else pa.float32()
    for split in SPLITS:
        total = 0
        for path in split_files(fs, uri, split):
            where = uri.at(path) if uri.is_s3 else path
            with fs.open_input_file(path) as f:
                try:
                    meta = pq.ParquetFile(f).metadata
                except (pa.ArrowInvalid, OSError) as exc:
                    raise DatasetError(f"{where}: not a readable Parquet file ({exc})") from None
                schema = meta.schema.to_arrow_schema()
            total += meta.num_rows
            if "label" not in schema.names:
                raise DatasetError(f"{where}: no 'label' column (has {schema.names})")
            if not pa.types.is_integer(schema.field("label").type):
                raise DatasetError(
                    f"{where}: column 'label' is {schema.field('label').type}, expected int64"
                )
            if "features" not in schema.names:
                raise DatasetError(f"{where}: no 'features' column (has {schema.names})")
            ftype = schema.field("features").type
            if not pa.types.is_fixed_size_list(ftype):
                raise DatasetError(
                    f"{where}: column 'features' is {ftype}, expected fixed_size_list"
                    f"<{value_type}>[{info.feature_size}]"
                )
            if ftype.list_size != info.feature_size:
                raise DatasetError(
                    f"{where}: features have length {ftype.list_size} but "
                    f"{DESCRIPTOR} feature_shape {info.feature_shape} needs {info.feature_size}"
                )
            if ftype.value_type != value_type:
                raise DatasetError(
                    f"{where}: features are {ftype.value_type} but {DESCRIPTOR} "
                    f"feature_dtype is {info.feature_dtype}"
                )
        if total != info.rows[split]:
            raise DatasetError(
                f"dataset {uri}: split {split!r} has {total} rows but {DESCRIPTOR} "
                f"rows.{split} says {info.rows[split]}; re-import the dataset"
            )
