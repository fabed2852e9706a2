"""What travels with a submitted job: the spec's folder and the rayfleet package.

The job's runtime_env has `working_dir` = the spec's folder (the spec, a SweepJob's TrainJob
file, a user training module beside it) and `py_modules` = this rayfleet package, so the
cluster runs exactly the code that validated the spec here, installed in its image or not.

Ray uploads a local working_dir through the head node's dashboard into its object store
(GCS), which caps packages at 500 MiB and keeps them in head-node memory. A spec folder
above INLINE_LIMIT_BYTES (50 MB; `RAYFLEET_INLINE_BUNDLE_MB`) is zipped here and written
to `<storage>/bundles/<sha256>.zip` instead, and the runtime_env names that URI: the nodes
download it from S3 with their own identity, and a second submission of the same folder
finds it already there.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from rayfleet.errors import SpecError, StorageError
from rayfleet.storage.filesystem import filesystem_for, write_bytes
from rayfleet.storage.uri import StorageURI

EXCLUDES = ("__pycache__", "*.pyc", ".git", ".venv", ".pytest_cache", ".mypy_cache", "*.egg-info")
INLINE_LIMIT_BYTES = 50 * 1000 * 1000
# Inside the zip everything sits under one folder, which Ray strips when it unpacks.
_TOP = "bundle"


def inline_limit() -> int:
    if value := os.environ.get("RAYFLEET_INLINE_BUNDLE_MB"):
        return int(float(value) * 1000 * 1000)
    return INLINE_LIMIT_BYTES


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in EXCLUDES)


def files(root: Path) -> list[Path]:
    """Every file under root that travels, sorted (so the zip and its hash are stable)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _excluded(d))
        found += [Path(folder, n) for n in sorted(names) if not _excluded(n)]
    return found


def zip_folder(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files(root):
            info = zipfile.ZipInfo(f"{_TOP}/{path.relative_to(root).as_posix()}")
            info.date_time = (1980, 1, 1, 0, 0, 0)  # content-addressed: no timestamps
            info.external_attr = (path.stat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


@dataclass(frozen=True)
class Bundle:
    runtime_env: dict[str, Any]
    size: int
    uploaded_to: str | None = None
    """The storage URI of the zipped spec folder, when it was too big to go inline."""


def package_dir() -> Path:
    import rayfleet

    return Path(rayfleet.__file__).resolve().parent


def check_inside(spec_dir: Path, referenced: Path, what: str) -> None:
    """Files the spec names must travel with it: inside its folder."""
    if not referenced.resolve().is_relative_to(spec_dir.resolve()):
        raise SpecError(
            f"{what} {referenced} is outside the spec's folder {spec_dir}, which is all that "
            "is sent to the cluster; move it next to the spec"
        )


def build(spec_dir: Path, storage: StorageURI, env_vars: dict[str, str]) -> Bundle:
    """The runtime_env for a job whose spec lives in `spec_dir` (see the module docstring)."""
    size = sum(p.stat().st_size for p in files(spec_dir))
    env: dict[str, Any] = {
        "py_modules": [str(package_dir())],
        "excludes": list(EXCLUDES),
        "env_vars": env_vars,
    }
    if size <= inline_limit():
        return Bundle({"working_dir": str(spec_dir), **env}, size)
    if not storage.is_s3:
        raise StorageError(
            f"{spec_dir} holds {size / 1e6:.0f} MB, too much to send through the head node, "
            f"and storage {storage} is not S3 the cluster could fetch it from; trim the "
            "folder (data belongs in storage) or use s3:// storage"
        )
    data = zip_folder(spec_dir)
    target = storage.join("bundles", f"{hashlib.sha256(data).hexdigest()[:32]}.zip")
    fs = filesystem_for(target)
    if fs.get_file_info(target.fs_path).type == pafs.FileType.NotFound:
        write_bytes(fs, target.fs_path, data)
    return Bundle({"working_dir": str(target), **env}, size, uploaded_to=str(target))
