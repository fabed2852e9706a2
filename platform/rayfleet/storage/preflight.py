"""Storage preflight: prove a storage URI is writable before any worker starts.

Without it, a missing bucket or bad credentials surface minutes later as a stack trace from a
Ray worker. The preflight asks S3 about the bucket (boto3, a control-plane call, so the error
code says which problem it is), then writes, reads back and deletes a probe object through the
same pyarrow filesystem training uses. Timeouts and retries are short: it fails in seconds.
"""

from __future__ import annotations

import time
import uuid

from rayfleet.errors import StorageError
from rayfleet.storage.filesystem import (
    S3Settings,
    filesystem_for,
    read_bytes,
    s3_client,
    write_bytes,
)
from rayfleet.storage.uri import StorageURI


def _check_bucket(uri: StorageURI, settings: S3Settings) -> None:
    import botocore.exceptions as bce

    client = s3_client(settings, max_attempts=2)
    where = f"{uri} ({settings.describe()})"
    try:
        client.head_bucket(Bucket=uri.bucket)
    except bce.NoCredentialsError:
        raise StorageError(
            f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or a web identity role (IRSA)"
        ) from None
    except (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
        raise StorageError(
            f"{where}: cannot reach S3 ({type(exc).__name__}); "
            "check AWS_ENDPOINT_URL and the network"
        ) from None
    except bce.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(
                f"{where}: bucket {uri.bucket!r} does not exist; create it "
                f"(aws s3 mb s3://{uri.bucket}) or point the spec's storage elsewhere"
            ) from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise StorageError(
                f"{where}: access to bucket {uri.bucket!r} denied ({code}); check the "
                "credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, IRSA role) and the bucket policy"
            ) from None
        raise StorageError(f"{where}: S3 answered {code or exc}; check the storage URI") from None


def preflight(uri: StorageURI, settings: S3Settings | None = None) -> float:
    """Write, read and delete a probe under `uri`; returns seconds taken. Raises StorageError."""
    started = time.monotonic()
    settings = settings or S3Settings.from_env()
    if uri.is_s3:
        _check_bucket(uri, settings)
    fs = filesystem_for(uri, settings)
    probe = uri.join(f".rayfleet-preflight-{uuid.uuid4().hex[:12]}")
    payload = b"rayfleet preflight\n"
    try:
        write_bytes(fs, probe.fs_path, payload)
        if read_bytes(fs, probe.fs_path) != payload:
            raise StorageError(f"{uri}: a probe object read back different bytes; check the store")
        fs.delete_file(probe.fs_path)
    except StorageError:
        raise
    except OSError as exc:
        detail = str(exc).splitlines()[0][:200]
        raise StorageError(
            f"{uri}: write/read/delete probe failed ({detail}); check permissions on this location"
        ) from None
    return time.monotonic() - started
