"""The run record: `<storage>/runs/<name>/record.json`, kept current while a run lives.

It is what outlives the cluster: the spec that ran, status, times, attempts, final metrics and
the newest verified checkpoint. Written with a single PUT, so readers see the old or the new
record, never half of one.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, is_dataclass
from typing import Any

import pyarrow.fs as pafs

from rayfleet.storage.filesystem import read_bytes, write_bytes
from rayfleet.storage.uri import StorageURI

RECORD = "record.json"


def read(fs: pafs.FileSystem, run_uri: StorageURI) -> dict[str, Any] | None:
    try:
        return json.loads(read_bytes(fs, run_uri.join(RECORD).fs_path))
    except (FileNotFoundError, ValueError):
        return None


def write(fs: pafs.FileSystem, run_uri: StorageURI, job, *, status: str, **fields: Any) -> dict:
    """Merge `fields` into the record and store it; `started` is kept from the first write."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    previous = read(fs, run_uri) or {}
    doc = {
        "name": job.name,
        "spec": job.model_dump(mode="json", by_alias=True),
        "status": status,
        "host": socket.gethostname(),
        "started": previous.get("started") if status != "RUNNING" else now,
        "updated": now,
    }
    # How many times this run name was launched (a relaunch resumes; it is not a new run).
    doc["launches"] = previous.get("launches", 0) + (status == "RUNNING")
    for key, value in fields.items():
        doc[key] = asdict(value) if is_dataclass(value) else value
    if status in ("SUCCEEDED", "FAILED"):
        doc["finished"] = now
    write_bytes(fs, run_uri.join(RECORD).fs_path, json.dumps(doc, indent=1).encode())
    return doc
