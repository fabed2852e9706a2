"""`rayfleet data import SOURCE DEST`: what SOURCE is, what DEST may hold, and publishing.

SOURCE is `digits` (the bundled dataset), a CSV or Parquet file or a folder of them (a
table, or text with --text), or a folder with one sub-folder of images per class; local or
s3://. DEST must be empty or absent, or hold only an unfinished import (train/, val/ or a
staging folder, no dataset.json); a DEST with a dataset.json is replaced only with
--overwrite, and only once the new import has fully succeeded. Anything else at DEST (files
this import did not write) makes it refuse, so an import never deletes a user's files.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from rayfleet.data.images import EXTENSIONS, ImageOptions, import_images
from rayfleet.data.layout import DESCRIPTOR, SPLITS, DatasetInfo
from rayfleet.data.options import ImportOptions
from rayfleet.data.tables import Source, TableOptions, import_table
from rayfleet.data.writer import STAGING_PREFIX, Staging
from rayfleet.errors import DatasetError
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.preflight import preflight
from rayfleet.storage.uri import StorageURI, parse_uri

TABLE_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _format(path: str) -> str | None:
    lower = path.lower()
    return next((fmt for ext, fmt in TABLE_EXTENSIONS.items() if lower.endswith(ext)), None)


def describe_source(value: str) -> tuple[str, Source | StorageURI]:
    """("table", Source) or ("images", folder URI); DatasetError when SOURCE is unusable."""
    uri = parse_uri(value)
    fs = filesystem_for(uri)
    info = fs.get_file_info(uri.fs_path)
    if info.type == pafs.FileType.NotFound:
        raise DatasetError(
            f"source {value}: does not exist; give a CSV/Parquet file or folder, an image "
            "folder (one sub-folder per class) or `digits`"
        )
    if info.type == pafs.FileType.File:
        fmt = _format(uri.fs_path)
        if fmt is None:
            raise DatasetError(f"source {value}: not a .csv or .parquet file")
        return "table", Source(fs, str(uri), fmt, [uri.fs_path])
    listing = fs.get_file_info(pafs.FileSelector(uri.fs_path, recursive=True))
    files = sorted(i.path for i in listing if i.type == pafs.FileType.File)
    tables = [f for f in files if _format(f) and not f.rsplit("/", 1)[-1].startswith(".")]
    if tables:
        formats = {_format(f) for f in tables}
        if len(formats) > 1:
            raise DatasetError(f"source {value}: mixes CSV and Parquet files; use one format")
        return "table", Source(fs, str(uri), formats.pop(), tables)
    if any(f.lower().endswith(EXTENSIONS) for f in files):
        return "images", uri
    raise DatasetError(
        f"source {value}: holds no .csv, .parquet or .png/.jpg files; give a table or an image "
        "folder with one sub-folder per class"
    )


def check_dest(fs: pafs.FileSystem, dest: StorageURI, *, overwrite: bool) -> None:
    """Refuse a DEST that holds a dataset (without --overwrite) or anything foreign."""
    info = fs.get_file_info(dest.fs_path)
    if info.type == pafs.FileType.File:
        raise DatasetError(f"destination {dest}: is a file; give a folder or prefix")
    if info.type == pafs.FileType.NotFound:
        return
    names = {
        i.path.rstrip("/").rsplit("/", 1)[-1]
        for i in fs.get_file_info(pafs.FileSelector(dest.fs_path, allow_not_found=True))
    }
    if DESCRIPTOR in names and not overwrite:
        raise DatasetError(
            f"destination {dest}: already holds a dataset; pass --overwrite to replace it "
            "or choose another DEST"
        )
    foreign = sorted(
        n for n in names if n not in (DESCRIPTOR, *SPLITS) and not n.startswith(STAGING_PREFIX)
    )
    if foreign:
        raise DatasetError(
            f"destination {dest}: holds other files ({', '.join(foreign[:5])}); choose an "
            "empty DEST"
        )


def import_source(source: str, dest: StorageURI, options: ImportOptions) -> DatasetInfo:
    """Import SOURCE (not digits) into DEST; nothing is left at DEST when it fails."""
    kind, located = describe_source(source)
    fs = filesystem_for(dest)
    check_dest(fs, dest, overwrite=options.overwrite)
    created = fs.get_file_info(dest.fs_path).type == pafs.FileType.NotFound
    name = options.name or _default_name(source)

    # Opened by the importer once it knows the row counts; discarded here, whatever failed.
    staged: list[Staging] = []

    def staging_for(rows_per_file: dict[str, int]) -> Staging:
        staged.append(Staging(fs, dest, rows_per_file))
        return staged[-1]

    try:
        preflight(dest)  # writable (bucket, credentials) before reading the whole source
        if kind == "table":
            if not options.label:
                raise DatasetError(f"source {source}: a table needs --label COLUMN")
            table_options = TableOptions(
                label=options.label,
                features=options.features,
                text=options.text,
                vocab_size=options.vocab_size,
                max_length=options.max_length,
                val_fraction=options.val_fraction,
                seed=options.seed,
                shards=options.shards,
            )
            info, staging = import_table(located, staging_for, name, table_options)
        else:
            if options.text or options.features or options.label:
                raise DatasetError(
                    f"source {source}: an image folder takes no --label/--features/--text "
                    "(classes are its sub-folders)"
                )
            image_options = ImageOptions(
                size=options.size,
                val_fraction=options.val_fraction,
                seed=options.seed,
                shards=options.shards,
            )
            images_fs = filesystem_for(located)
            info, staging = import_images(images_fs, located, staging_for, name, image_options)
        staging.publish(info)
        return info
    except BaseException:
        for staging in staged:
            staging.discard()
        if created and fs.get_file_info(dest.fs_path).type == pafs.FileType.Directory:
            fs.delete_dir(dest.fs_path)
        raise


def _default_name(source: str) -> str:
    stem = source.rstrip("/").rsplit("/", 1)[-1]
    for ext in TABLE_EXTENSIONS:
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    return stem or "dataset"
