"""Import a folder of images with one sub-folder per class (PNG or JPEG, via Pillow).

Every image is decoded, converted to the first image's channels (L -> 1, RGB -> 3,
RGBA -> 4; any other mode -> RGB), resized to `size` (default: the first image's) and
scaled to [0, 1]; features are [C, H, W] float32. Class names are the sub-folder names in
sorted order. Images are decoded and written CHUNK at a time, so memory stays bounded;
the split is the same stratified, seeded one as for tables.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from rayfleet.data.layout import DatasetInfo
from rayfleet.data.split import StratifiedSplit, split_sizes
from rayfleet.data.writer import Moments, Staging
from rayfleet.errors import DatasetError
from rayfleet.storage.uri import StorageURI

EXTENSIONS = (".png", ".jpg", ".jpeg")
CHUNK = 512
MODES = {"L": 1, "RGB": 3, "RGBA": 4}
FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class ImageOptions:
    size: tuple[int, int] | None = None  # (height, width)
    val_fraction: float = 0.2
    seed: int = 0
    shards: int | None = None


def list_classes(fs: pafs.FileSystem, root: StorageURI) -> dict[str, list[str]]:
    """Class name -> sorted image paths, for sub-folders of `root` that hold images."""
    classes: dict[str, list[str]] = {}
    top = fs.get_file_info(pafs.FileSelector(root.fs_path))
    for folder in sorted((i for i in top if i.type == pafs.FileType.Directory), key=_name):
        if _name(folder).startswith("."):
            continue
        files = fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
        images = sorted(
            f.path
            for f in files
            if f.type == pafs.FileType.File
            and f.path.lower().endswith(EXTENSIONS)
            and not _name(f).startswith(".")
        )
        if images:
            classes[_name(folder)] = images
    return classes


def _name(info: pafs.FileInfo) -> str:
    return info.path.rstrip("/").rsplit("/", 1)[-1]


def _open(fs: pafs.FileSystem, path: str, where: str):
    from PIL import Image

    try:
        with fs.open_input_file(path) as f:
            image = Image.open(io.BytesIO(f.read()))
            image.load()
        return image
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{where}: not a readable image ({exc}); fix or remove it") from None


def import_images(
    fs: pafs.FileSystem, root: StorageURI, staging_for, name: str, options: ImageOptions
) -> tuple[DatasetInfo, Staging]:
    """Import the image folder at `root`; returns the descriptor and the staging to publish."""
    from PIL import Image

    classes = list_classes(fs, root)
    if len(classes) < 2:
        raise DatasetError(
            f"{root}: needs at least 2 class sub-folders with .png/.jpg images, found "
            f"{len(classes)} ({', '.join(classes) or 'none'})"
        )
    names = list(classes)
    first_path = classes[names[0]][0]
    first = _open(fs, first_path, str(root.at(first_path)))
    mode = first.mode if first.mode in MODES else "RGB"
    height, width = options.size or (first.height, first.width)
    channels = MODES[mode]
    class_counts = {i: len(classes[c]) for i, c in enumerate(names)}
    train_rows, val_rows = split_sizes(class_counts, options.val_fraction)
    if val_rows == 0:
        raise DatasetError(
            f"{root}: the val split would be empty ({sum(class_counts.values())} images); add "
            "images or raise --val-fraction"
        )
    per_file = max(1, FILE_BYTES // (channels * height * width * 4))

    def rows_per_file(rows: int, files: int | None) -> int:
        return -(-rows // files) if files else per_file

    shards = options.shards
    staging = staging_for(
        {
            "train": rows_per_file(train_rows, shards),
            "val": rows_per_file(val_rows, max(1, shards // 2) if shards else None),
        }
    )
    split = StratifiedSplit(class_counts, options.val_fraction, options.seed)
    moments = Moments(channels)
    jobs = [(path, i) for i, c in enumerate(names) for path in classes[c]]
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start : start + CHUNK]
        x = np.empty((len(chunk), channels, height, width), dtype=np.float32)
        for row, (path, _) in enumerate(chunk):
            image = _open(fs, path, str(root.at(path))).convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
            x[row] = pixels.reshape(height, width, channels).transpose(2, 0, 1)
        labels = np.array([label for _, label in chunk], dtype=np.int64)
        is_val = split.assign(labels)
        train = x[~is_val]
        if len(train):
            mean = train.mean(axis=(0, 2, 3), dtype=np.float64)
            m2 = ((train - mean[None, :, None, None].astype(np.float32)) ** 2).sum(
                axis=(0, 2, 3), dtype=np.float64
            )
            moments.add_counted(len(train) * height * width, mean, m2)
        staging.write("train", train, labels[~is_val])
        staging.write("val", x[is_val], labels[is_val])
    info = DatasetInfo(
        name=name,
        kind="image",
        feature_shape=[channels, height, width],
        feature_dtype="float32",
        num_classes=len(names),
        class_names=names,
        rows={"train": train_rows, "val": val_rows},
        normalization=moments.result(),
    )
    return info, staging
