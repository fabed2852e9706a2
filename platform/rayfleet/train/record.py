"""The run record: `<storage>/runs/<name>/record.json`, kept current while a run lives.

It is what outlives the cluster: the spec that ran, status, times, launches, the epochs
trained (and by which launch), final metrics and the newest verified checkpoint; for a
submitted run also its submissions (id, cluster address, status, times) and the last lines
of its log.

Two writers share it: the driver running the work (`rayfleet run` / `rayfleet sweep`, here or
on a cluster) and the submitting CLI (`rayfleet submit`, `rayfleet jobs`). Each write reads
the stored record, changes only its own keys and stores it with a compare-and-swap
(`storage.documents.update`: S3 If-Match / If-None-Match, a locked atomic replace locally),
retrying on a conflict, so neither writer ever erases what the other wrote in between.
The `fs` arguments are the run's filesystem, kept so callers hold one handle per run; the
compare-and-swap itself goes through `storage.documents`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any

import pyarrow.fs as pafs

from rayfleet.storage import documents
from rayfleet.storage.uri import StorageURI

RECORD = "record.json"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Per-launch facts: cleared when the run name is launched again.
_LAUNCH_KEYS = ("error", "finished", "result")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read(fs: pafs.FileSystem, run_uri: StorageURI) -> dict[str, Any] | None:
    """The stored record (one GET: never a half-rewritten copy), or None."""
    return documents.read(run_uri.join(RECORD)).json()


def update(
    fs: pafs.FileSystem, run_uri: StorageURI, change: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Apply `change` to the stored record in place and store it unless someone else wrote
    in between (then read again and re-apply); return what was stored."""
    return documents.update(run_uri.join(RECORD), change)


def write(fs: pafs.FileSystem, run_uri: StorageURI, job, *, status: str, **fields: Any) -> dict:
    """The driver's write: status plus `fields`; `started` and `launches` count launches."""

    def change(doc: dict[str, Any]) -> None:
        stamp = now()
        if status == "RUNNING":
            # A relaunch of the same name resumes the run; it is not a new run.
            doc["launches"] = doc.get("launches", 0) + 1
            doc["started"] = doc.get("started") or stamp
            for key in _LAUNCH_KEYS:
                doc.pop(key, None)
        doc.update(
            name=job.name,
            kind=job.kind,
            spec=job.model_dump(mode="json", by_alias=True),
            status=status,
            host=socket.gethostname(),
            updated=stamp,
        )
        for key, value in fields.items():
            doc[key] = asdict(value) if is_dataclass(value) else value
        if status in TERMINAL:
            doc["finished"] = stamp

    return update(fs, run_uri, change)


def add_epoch(
    fs: pafs.FileSystem, run_uri: StorageURI, *, epoch: int, metrics: dict[str, Any]
) -> dict:
    """Note a finished epoch (and which launch trained it): the record shows every epoch
    trained, so an epoch trained twice after a resume is visible, not hidden."""

    def change(doc: dict[str, Any]) -> None:
        doc.setdefault("epochs", []).append(
            {"epoch": epoch, "launch": doc.get("launches", 1), "at": now(), "metrics": metrics}
        )
        doc["updated"] = now()

    return update(fs, run_uri, change)


def note_resumed(
    fs: pafs.FileSystem, run_uri: StorageURI, *, epoch: int, metrics: dict[str, Any]
) -> dict:
    """A launch resumes after `epoch`: every epoch up to it was trained by an earlier launch.
    Fill in the ones the record missed (a driver killed between checkpointing an epoch and
    noting it), marked `recovered`, so the history has no hole and no epoch twice."""

    def change(doc: dict[str, Any]) -> None:
        noted = {e["epoch"] for e in doc.get("epochs", [])}
        earlier = max(doc.get("launches", 1) - 1, 1)
        for missing in sorted(set(range(epoch + 1)) - noted):
            doc.setdefault("epochs", []).append(
                {
                    "epoch": missing,
                    "launch": earlier,
                    "at": None,
                    "metrics": metrics if missing == epoch else {},
                    "recovered": "from the checkpoint this launch resumed from",
                }
            )
        doc.get("epochs", []).sort(key=lambda e: (e["epoch"], e["launch"]))

    return update(fs, run_uri, change)
