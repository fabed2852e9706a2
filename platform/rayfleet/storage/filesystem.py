"""Turn a StorageURI into the `pyarrow.fs` filesystem every reader and writer uses.

All file I/O goes through pyarrow.fs because that is what Ray Train takes for its storage;
using the same object for datasets and checkpoints means one set of S3 settings, one retry
policy and one credential chain. Credentials are never passed explicitly: the AWS SDK's
default chain (environment, shared profile, web identity / IRSA, instance metadata) resolves
them in whichever process opens the filesystem, so a pickled filesystem carries no secrets to
Ray workers and pods use their own ServiceAccount identity.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rayfleet.lazy import lazy
from rayfleet.storage.uri import StorageURI

pafs = lazy("pyarrow.fs")


@dataclass(frozen=True)
class S3Settings:
    """S3 connection settings from the standard AWS environment variables."""

    region: str
    endpoint_url: str | None  # for S3-compatible stores (MinIO, moto, Ceph)
    connect_timeout: float = 5.0
    request_timeout: float = 20.0
    max_attempts: int = 6

    @classmethod
    def from_env(cls) -> S3Settings:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(region=region, endpoint_url=endpoint or None)

    def describe(self) -> str:
        return f"endpoint {self.endpoint_url}" if self.endpoint_url else f"region {self.region}"


def s3_filesystem(settings: S3Settings | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem with bounded timeouts and retries (so an outage fails, not hangs)."""
    settings = settings or S3Settings.from_env()
    kwargs: dict = {
        "region": settings.region,
        "connect_timeout": settings.connect_timeout,
        "request_timeout": settings.request_timeout,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts),
    }
    if settings.endpoint_url:
        parsed = urlparse(settings.endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(uri: StorageURI, settings: S3Settings | None = None) -> pafs.FileSystem:
    """The pyarrow filesystem that holds `uri`; pair it with `uri.fs_path`."""
    if uri.is_s3:
        return s3_filesystem(settings)
    return pafs.LocalFileSystem()


def s3_client(settings: S3Settings | None = None, *, max_attempts: int = 3):
    """A boto3 S3 client for control-plane calls (bucket checks, conditional writes), with
    the same endpoint, region and bounded timeouts as the pyarrow filesystem. A fresh
    session each time: the default one caches credentials it resolved earlier."""
    import boto3
    from botocore.config import Config

    settings = settings or S3Settings.from_env()
    return boto3.session.Session().client(
        "s3",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=Config(
            connect_timeout=settings.connect_timeout,
            read_timeout=10,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        ),
    )


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def atomic_write_local(path: Path, data: bytes) -> None:
    """Write a local file so that readers see the old or the new content, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Store a whole object: one PUT on S3, a temp file renamed into place locally, so a
    reader (or a crash) never sees half of it."""
    if isinstance(fs, pafs.LocalFileSystem):
        atomic_write_local(Path(path), data)
        return
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound
