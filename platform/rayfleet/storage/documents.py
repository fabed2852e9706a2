"""Small JSON documents in storage with compare-and-swap writes: no update is ever lost.

Run records, leases and pins are read-modify-written by more than one process (the driver on
a cluster, the CLI on a laptop, a second driver started by mistake). A plain PUT lets the
slower writer erase the faster one's keys. Here every write says what it expects to replace:

- S3: `PutObject` with `If-Match: <etag>` (replace exactly the version read) or
  `If-None-Match: *` (create only if absent). AWS S3, MinIO and moto honour both; a
  412 PreconditionFailed means someone else wrote first, and `update` reads again and retries.
- Local paths: an exclusive `flock` on a sidecar lock file makes check-and-write one step,
  and the new content lands by `os.replace` of a temp file, so a reader sees the old or the
  new document, never half of one.

The version of a document is its ETag on S3 and its sha256 locally. SSE-KMS: when
RAYFLEET_S3_KMS_KEY_ID is set, these writes request it (pyarrow, which writes datasets and
checkpoints, cannot: those rely on the bucket's default encryption; see the README).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayfleet.errors import StorageError
from rayfleet.retry import CONFLICT, retrying
from rayfleet.storage.filesystem import atomic_write_local, s3_client
from rayfleet.storage.uri import StorageURI

KMS_KEY_ENV = "RAYFLEET_S3_KMS_KEY_ID"
_ATTEMPTS = 12


class Conflict(Exception):
    """Someone else wrote the document since it was read (internal: `update` retries)."""


@dataclass(frozen=True)
class Versioned:
    """A document's bytes and version as read; `data is None` when it does not exist."""

    data: bytes | None
    version: str | None

    def json(self) -> dict[str, Any] | None:
        if self.data is None:
            return None
        try:
            doc = json.loads(self.data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _s3_error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def read(uri: StorageURI) -> Versioned:
    """The document's bytes and version (None, None when absent)."""
    if not uri.is_s3:
        path = Path(uri.fs_path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return Versioned(None, None)
        return Versioned(data, _sha(data))
    import botocore.exceptions as bce

    try:
        got = s3_client().get_object(Bucket=uri.bucket, Key=uri.key)
    except bce.ClientError as exc:
        if _s3_error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return Versioned(None, None)
        raise StorageError(f"{uri}: S3 answered {_s3_error_code(exc) or exc}") from None
    except bce.BotoCoreError as exc:  # unreachable store: an I/O error, as pyarrow raises
        raise ConnectionError(f"{uri}: {exc}") from None
    return Versioned(got["Body"].read(), got["ETag"])


def write(uri: StorageURI, data: bytes, *, expect: str | None) -> str:
    """Store `data` if the document is still at version `expect` (None: still absent).

    Returns the new version; raises Conflict when another writer got there first.
    """
    if not uri.is_s3:
        path = Path(uri.fs_path)
        with _locked(path):
            try:
                current = _sha(path.read_bytes())
            except FileNotFoundError:
                current = None
            if current != expect:
                raise Conflict(str(uri))
            atomic_write_local(path, data)
        return _sha(data)
    import botocore.exceptions as bce

    kwargs: dict[str, Any] = {"IfMatch": expect} if expect else {"IfNoneMatch": "*"}
    if key_id := os.environ.get(KMS_KEY_ENV):
        kwargs.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=key_id)
    try:
        put = s3_client().put_object(
            Bucket=uri.bucket, Key=uri.key, Body=data, ContentType="application/json", **kwargs
        )
    except bce.ClientError as exc:
        # 409 ConditionalRequestConflict: a concurrent conditional write is in flight.
        if _s3_error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            raise Conflict(str(uri)) from None
        if _s3_error_code(exc) in ("NoSuchKey", "404") and expect:
            raise Conflict(str(uri)) from None
        raise StorageError(f"{uri}: S3 answered {_s3_error_code(exc) or exc}") from None
    except bce.BotoCoreError as exc:
        raise ConnectionError(f"{uri}: {exc}") from None
    return put["ETag"]


def delete(uri: StorageURI) -> None:
    if uri.is_s3:
        s3_client().delete_object(Bucket=uri.bucket, Key=uri.key)
    else:
        Path(uri.fs_path).unlink(missing_ok=True)


def update(
    uri: StorageURI, change: Callable[[dict[str, Any]], None], *, attempts: int = _ATTEMPTS
) -> dict[str, Any]:
    """Read the JSON document at `uri`, apply `change` in place, store it only if nobody
    wrote in between; on a conflict read again and re-apply. Returns what was stored."""

    def attempt() -> dict[str, Any]:
        current = read(uri)
        doc = current.json() or {}
        change(doc)
        write(uri, json.dumps(doc, indent=1).encode(), expect=current.version)
        return doc

    try:
        return retrying(on=Conflict, wait=CONFLICT, attempts=attempts)(attempt)
    except Conflict:
        raise StorageError(
            f"{uri}: {attempts} writers in a row changed this document while it was being "
            "updated; is a second driver running for the same name?"
        ) from None
