"""Storage URIs: `s3://bucket/prefix` or a local path, parsed once and joined safely.

A URI is turned into two things: the string users see (`s3://bucket/runs/x`) and the path a
`pyarrow.fs` filesystem takes (`bucket/runs/x`, or an absolute local path). Keeping both in one
small value object stops the two from drifting apart in string concatenations.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rayfleet.errors import StorageError

# S3 bucket naming rules (the general-purpose bucket subset every S3-compatible store accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StorageURI:
    """A parsed storage location. `key` is the prefix inside the bucket, or an absolute path."""

    scheme: str  # "s3" or "file"
    bucket: str  # "" for local paths
    key: str

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def fs_path(self) -> str:
        """The path a pyarrow filesystem takes: `bucket/key` for S3, the absolute path locally."""
        if self.is_s3:
            return f"{self.bucket}/{self.key}" if self.key else self.bucket
        return self.key

    def at(self, fs_path: str) -> StorageURI:
        """The URI of another path on the same filesystem (e.g. one a listing returned)."""
        if self.is_s3:
            bucket, _, key = fs_path.partition("/")
            return StorageURI("s3", bucket, key.strip("/"))
        return StorageURI("file", "", fs_path)

    def join(self, *parts: str) -> StorageURI:
        """A child location; parts may contain slashes but never climb out with `..`."""
        pieces = [p.strip("/") for p in parts if p and p.strip("/")]
        for piece in pieces:
            if ".." in piece.split("/"):
                raise StorageError(f"storage path part {piece!r} contains '..'; use a plain name")
        if self.is_s3:
            key = "/".join([self.key, *pieces]) if self.key else "/".join(pieces)
            return StorageURI("s3", self.bucket, key)
        return StorageURI("file", "", str(Path(self.key, *pieces)))

    def __str__(self) -> str:
        if self.is_s3:
            return f"s3://{self.fs_path}"
        return self.key


def parse_uri(value: str, *, base_dir: Path | None = None) -> StorageURI:
    """Parse `s3://bucket/prefix`, `file:///abs`, or a local path (relative to `base_dir`).

    Raises StorageError with the value and the accepted forms when the URI is malformed.
    """
    if not isinstance(value, str) or not value.strip():
        raise StorageError("storage URI is empty; use s3://bucket/prefix or a local path")
    value = value.strip()
    if "://" in value:
        scheme, _, rest = value.partition("://")
        scheme = scheme.lower()
        if scheme == "s3":
            bucket, _, key = rest.partition("/")
            if not _BUCKET.match(bucket):
                raise StorageError(
                    f"{value!r}: bucket name {bucket!r} is not valid (3-63 lowercase letters, "
                    "digits, dots or hyphens); use s3://bucket/prefix"
                )
            key = key.strip("/")
            if ".." in key.split("/"):
                raise StorageError(f"{value!r}: '..' is not allowed in an S3 key prefix")
            return StorageURI("s3", bucket, key)
        if scheme == "file":
            if not rest.startswith("/"):
                raise StorageError(f"{value!r}: file URIs must be absolute (file:///path)")
            return StorageURI("file", "", os.path.normpath(rest))
        raise StorageError(
            f"{value!r}: scheme {scheme!r} is not supported; use s3://bucket/prefix or a local path"
        )
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return StorageURI("file", "", os.path.normpath(path))
