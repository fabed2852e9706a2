"""The submitting side of a run record (see `rayfleet.train.record`).

The driver on the cluster keeps status, epochs, metrics and the checkpoint current while it
lives. What it cannot know — the submission ids, the cluster address, that its process was
killed, the last lines of its log — the CLI adds whenever it sees the job: at submission, when
a followed job ends, and on `jobs status|describe|stop`. So the record is current after a
driver dies too, and `jobs describe NAME --storage URI` needs no cluster.
"""

from __future__ import annotations

import time
from typing import Any

from rayfleet.errors import JobNotFoundError
from rayfleet.specs import SweepJob, TrainJob
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import StorageURI, parse_uri
from rayfleet.train import record

LOG_TAIL_LINES = 40


def home(spec: TrainJob | SweepJob, storage: StorageURI) -> StorageURI:
    """Where a run's record lives: runs/NAME for a TrainJob, sweeps/NAME for a SweepJob."""
    return storage.join("sweeps" if isinstance(spec, SweepJob) else "runs", spec.name)


def _iso(ms: int | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else None


def submission_entry(job) -> dict[str, Any]:
    """A Ray JobDetails as the record keeps it."""
    return {
        "id": job.submission_id,
        "status": str(getattr(job.status, "value", job.status)),
        "submitted": _iso(job.start_time),
        "ended": _iso(job.end_time),
        "message": (job.message or "")[:500],
        "exitCode": job.driver_exit_code,
        "errorType": str(getattr(job.error_type, "value", job.error_type or "")) or None,
    }


def note_submission(uri: StorageURI, spec, *, address: str, job, log_tail: str | None = None):
    """Add or refresh a submission in the record; a terminal Ray status the driver could not
    write itself (killed, stopped, never started) becomes the record's status."""

    def change(doc: dict[str, Any]) -> None:
        entry = submission_entry(job)
        subs = [s for s in doc.get("submissions", []) if s["id"] != entry["id"]]
        subs.append(entry)
        subs.sort(key=lambda s: s.get("submitted") or "")
        doc.setdefault("name", spec.name)
        doc.setdefault("kind", spec.kind)
        doc.setdefault("spec", spec.model_dump(mode="json", by_alias=True))
        doc.update(submissions=subs, cluster=address, retries=len(subs) - 1)
        latest = subs[-1]["id"] == entry["id"]
        if latest and entry["status"] in ("PENDING", "RUNNING") and "status" not in doc:
            doc["status"] = "SUBMITTED"
        if latest and entry["status"] in record.TERMINAL:
            if entry["status"] != "SUCCEEDED" or doc.get("status") != "SUCCEEDED":
                doc["status"] = entry["status"]
            if entry["status"] != "SUCCEEDED":
                doc["error"] = entry["message"]
            doc.setdefault("finished", entry["ended"])
        if log_tail is not None:
            doc["logTail"] = log_tail.splitlines()[-LOG_TAIL_LINES:]
        doc["updated"] = record.now()

    return record.update(filesystem_for(uri), uri, change)


def refresh(cluster, job, uri: StorageURI, spec, *, with_logs: bool) -> dict[str, Any]:
    """Bring the record at `uri` up to date with what `cluster` says about `job` (and, with
    `with_logs`, the last lines of its log, when the cluster still has them)."""
    tail = None
    if with_logs:
        try:
            tail = cluster.logs(job.submission_id)
        except Exception:  # noqa: BLE001 - the record is worth writing without the log
            tail = None
    return note_submission(uri, spec, address=cluster.address, job=job, log_tail=tail)


def find(name: str, storage: str) -> tuple[StorageURI, dict[str, Any]]:
    """A run's (or sweep's) record from storage alone."""
    root = parse_uri(storage)
    for kind in ("runs", "sweeps"):
        uri = root.join(kind, name)
        if (doc := record.read(filesystem_for(uri), uri)) is not None:
            return uri, doc
    raise JobNotFoundError(
        f"no record for {name!r} under {root}/runs or {root}/sweeps; check the name and "
        "--storage (the spec's storage, or RAYFLEET_STORAGE)"
    )
