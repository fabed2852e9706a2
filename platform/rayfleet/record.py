"""The run record: `<storage>/runs/<name>/record.json`, kept current while a run lives.

It is what outlives the cluster: the spec that ran, status, times, launches, the epochs
trained (and by which launch), final metrics, the newest verified checkpoint and the
resources each launch held (`usage`, with cost under a price table: rayfleet.usage); for a
submitted run also its submissions (id, cluster address, status, times) and the last lines
of its log.

Two writers share it: the driver running the work (`rayfleet run` / `rayfleet sweep`, here or
on a cluster) and the submitting CLI (`rayfleet submit`, `rayfleet jobs`). Each write reads
the stored record, changes only its own keys and stores it with a compare-and-swap
(`storage.documents.update`: S3 If-Match / If-None-Match, a locked atomic replace locally),
retrying on a conflict, so neither writer ever erases what the other wrote in between.
The `fs` arguments are the run's filesystem, kept so callers hold one handle per run; the
compare-and-swap itself goes through `storage.documents`.

The driver keeps status, epochs, metrics and the checkpoint current while it lives. What it
cannot know (the submission ids, the cluster address, that its process was killed, the last
lines of its log) the CLI adds whenever it sees the job: at submission, when a followed job
ends, and on `jobs status|describe|stop`. So the record is current after a driver dies too,
and `jobs describe NAME --storage URI` needs no cluster.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from rayfleet import usage
from rayfleet.errors import BadInputError, JobNotFoundError, StorageError
from rayfleet.lazy import lazy
from rayfleet.specs import SweepJob, TrainJob
from rayfleet.specs.base import dataset_location
from rayfleet.storage import documents
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import StorageURI, parse_uri
from rayfleet.usage import RunUsage, SweepUsage

pafs = lazy("pyarrow.fs")

log = logging.getLogger(__name__)
RECORD = "record.json"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Per-launch facts: cleared when the run name is launched again.
_LAUNCH_KEYS = ("error", "finished", "result")


class _Doc(BaseModel):
    """camelCase keys like the specs; unknown keys refused, so a typo or a foreign writer is
    caught on the next read instead of spreading. Snake-case field names are accepted too
    (records written before the keys were unified)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class RunResultDoc(_Doc):
    """The outcome of a finished run: the same keys `rayfleet run -o json` prints."""

    name: str
    run_uri: str
    checkpoint_uri: str | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = {}
    attempts: int = 1
    elapsed_s: float = 0.0
    skipped: list[str] = []
    # Seconds from the driver's process start to each start-up phase (StartupClock).
    startup: dict[str, float] = Field(default={}, alias="startupS")


class EpochEntry(_Doc):
    epoch: int = Field(ge=0)
    launch: int = Field(default=1, ge=1)
    at: str | None = None
    metrics: dict[str, Any] = {}
    recovered: str | None = None  # filled in from the checkpoint a launch resumed from
    # Workers that reported the epoch (elastic runs integrate their usage over it).
    workers: int | None = Field(default=None, ge=1)


class Submission(_Doc):
    """A Ray job submission of the run, as the cluster reported it."""

    id: str
    status: str | None = None
    submitted: str | None = None
    ended: str | None = None
    message: str | None = None
    exit_code: int | None = None
    error_type: str | None = None


class RunRecord(_Doc):
    """record.json. Every key is optional: the driver and the CLI each fill their own."""

    name: str | None = None
    kind: str | None = None
    spec: dict[str, Any] | None = None
    status: str | None = None
    host: str | None = None
    updated: str | None = None
    started: str | None = None
    finished: str | None = None
    launches: int | None = Field(default=None, ge=0)
    attempts: int | None = None
    error: str | None = None
    result: RunResultDoc | None = None
    epochs: list[EpochEntry] = []
    submissions: list[Submission] = []
    cluster: str | None = None
    retries: int | None = None
    log_tail: list[str] = []
    # Requested resources x time, the workers' busy time, the nodes' accelerator and market
    # (and cost, with a price table): rayfleet.usage.
    usage: RunUsage | SweepUsage | None = None


def _checked(doc: dict[str, Any], where: StorageURI) -> dict[str, Any]:
    """`doc` as a valid RunRecord would store it (keys as they were given, camelCase)."""
    try:
        record = RunRecord.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise StorageError(
            f"{where} is not a valid run record ({field}: {first['msg']}); move it aside, "
            "or use another metadata.name"
        ) from None
    return record.model_dump(mode="json", by_alias=True, exclude_unset=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read(fs: pafs.FileSystem, run_uri: StorageURI) -> dict[str, Any] | None:
    """The stored record (one GET: never a half-rewritten copy, checked against RunRecord),
    or None."""
    uri = run_uri.join(RECORD)
    doc = documents.read(uri).json()
    return None if doc is None else _checked(doc, uri)


def job_spec(run_uri: StorageURI) -> dict[str, Any]:
    """The `spec` of the TrainJob a run's record says ran ({} without a record): what a later
    command about the run (evaluate, compress) reads its dataset and tracking from."""
    doc = read(filesystem_for(run_uri), run_uri) or {}
    spec = (doc.get("spec") or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def dataset_in(spec: dict[str, Any], storage: StorageURI | str | None) -> StorageURI | None:
    """The dataset a stored TrainJob spec (`job_spec`) trained on (`specs.base.
    dataset_location`: a name under the storage root, else a URI); None when it names none."""
    raw = spec.get("dataset")
    if not isinstance(raw, str) or not raw:
        return None
    return dataset_location(raw, storage)


def update(
    fs: pafs.FileSystem, run_uri: StorageURI, change: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Apply `change` to the stored record in place and store it unless someone else wrote
    in between (then read again and re-apply); return what was stored. Both the stored
    record and the changed one must be valid RunRecords."""
    uri = run_uri.join(RECORD)

    def checked_change(doc: dict[str, Any]) -> None:
        current = _checked(doc, uri)
        change(current)
        doc.clear()
        doc.update(_checked(current, uri))

    return documents.update(uri, checked_change)


def write(
    fs: pafs.FileSystem,
    run_uri: StorageURI,
    job,
    *,
    status: str,
    busy: list[dict[str, Any]] | None = None,
    at: float | None = None,
    **fields: Any,
) -> dict:
    """The driver's write: status plus `fields`; `started` and `launches` count launches.
    `busy`: the workers' latest busy reports of this launch (usage.BusyTally). `at`: when
    it happened (a write queued behind others, like a sweep's trial records, runs later:
    the launch's start or end, which usage bills, is the event's time, not the write's)."""

    def change(doc: dict[str, Any]) -> None:
        stamp = now()
        when = at if at is not None else time.time()
        if busy:
            _note_busy(doc, busy, job.name)
        if status == "RUNNING":
            # A relaunch of the same name resumes the run; it is not a new run.
            doc["launches"] = doc.get("launches", 0) + 1
            doc["started"] = doc.get("started") or stamp
            for key in _LAUNCH_KEYS:
                doc.pop(key, None)
            _open_launch(doc, job, when)
        elif status in TERMINAL:
            _close_launch(doc, job.name, when, "driver")
        doc.update(
            name=job.name,
            kind=job.kind,
            spec=job.model_dump(mode="json", by_alias=True),
            status=status,
            host=socket.gethostname(),
            updated=stamp,
        )
        for key, value in fields.items():
            if is_dataclass(value):  # RunResult: stored with the keys `run -o json` uses
                value = RunResultDoc.model_validate(asdict(value)).model_dump(by_alias=True)
            doc[key] = value
        if status in TERMINAL:
            doc["finished"] = stamp

    return update(fs, run_uri, change)


def add_epoch(
    fs: pafs.FileSystem,
    run_uri: StorageURI,
    *,
    epoch: int,
    metrics: dict[str, Any],
    workers: int | None = None,
    busy: list[dict[str, Any]] | None = None,
) -> dict:
    """Note a finished epoch (and which launch trained it, on how many workers when known):
    the record shows every epoch trained, so an epoch trained twice after a resume is
    visible, not hidden. `busy`: the workers' latest busy reports so far (kept with it, so a
    killed driver's record has them up to its last epoch)."""

    def change(doc: dict[str, Any]) -> None:
        entry = {"epoch": epoch, "launch": doc.get("launches", 1), "at": now(), "metrics": metrics}
        if workers:
            entry["workers"] = workers
        doc.setdefault("epochs", []).append(entry)
        if busy:
            _note_busy(doc, busy, doc.get("name") or run_uri.fs_path.rsplit("/", 1)[-1])
        doc["updated"] = now()

    return update(fs, run_uri, change)


# Usage: each launch is opened by the driver's RUNNING write and closed by its terminal one;
# a launch whose driver was killed is closed by the CLI at the submission's end, else by the
# next launch at its last epoch. The totals are recomputed from the launches on each close.


def _launches(doc: dict[str, Any]) -> list[usage.LaunchUsage]:
    stored = doc.get("usage") or {}
    return [usage.LaunchUsage.model_validate(item) for item in stored.get("launches", [])]


def _busy(doc: dict[str, Any]) -> list[usage.WorkerBusy]:
    stored = doc.get("usage") or {}
    return [usage.WorkerBusy.model_validate(item) for item in stored.get("busy", [])]


def _store_usage(
    doc: dict[str, Any],
    launches: list[usage.LaunchUsage],
    name: str,
    busy: list[usage.WorkerBusy] | None = None,
) -> None:
    epochs, busy = doc.get("epochs", []), _busy(doc) if busy is None else busy
    prices = usage.active_prices()
    try:
        found = usage.run_usage(launches, epochs, prices, f"run {name}", busy=busy)
    except BadInputError as exc:  # checked before the run started; never fail a run on it
        # (a node-said accelerator or spot market the table lacks is only seen now)
        log.warning("usage recorded without cost: %s", exc)
        found = usage.run_usage(launches, epochs, None, f"run {name}", busy=busy)
    doc["usage"] = found.model_dump(mode="json", by_alias=True)


def _note_busy(doc: dict[str, Any], reports: list[dict[str, Any]], name: str) -> None:
    """Fold the workers' busy reports into the current launch's (usage.merge_busy)."""
    busy = usage.merge_busy(_busy(doc), reports, doc.get("launches", 1))
    _store_usage(doc, _launches(doc), name, busy)


def note_busy(fs: pafs.FileSystem, run_uri: StorageURI, reports: list[dict[str, Any]]) -> dict:
    """Keep the workers' latest busy reports of the current launch in the record (the sweep
    driver's last word on a trial's, after Tune ended it)."""

    def change(doc: dict[str, Any]) -> None:
        _note_busy(doc, reports, doc.get("name") or run_uri.fs_path.rsplit("/", 1)[-1])
        doc["updated"] = now()

    return update(fs, run_uri, change)


def _open_launch(doc: dict[str, Any], job, at: float) -> None:
    scaling = getattr(getattr(job, "spec", None), "scaling", None)
    if scaling is None:  # not a TrainJob: nothing it holds is known here
        return
    launches = _close_open(doc, _launches(doc))
    launches.append(
        usage.LaunchUsage(
            launch=doc["launches"],
            started=at,
            workers=scaling.num_workers,
            min_workers=scaling.min_workers if scaling.elastic else None,
            cpus_per_worker=scaling.cpus_per_worker,
            gpus_per_worker=scaling.gpus,
        )
    )
    _store_usage(doc, launches, job.name)


def _close_open(doc: dict[str, Any], launches: list[usage.LaunchUsage]) -> list:
    """Close launches nobody closed (driver killed, end not seen) at their last epoch."""
    for launch in launches:
        if launch.ended is None:
            stamps = [
                usage.iso_seconds(e.get("at"))
                for e in doc.get("epochs", [])
                if e.get("launch") == launch.launch
            ]
            launch.ended = max([s for s in stamps if s is not None] or [launch.started])
            launch.ended_by = "lastEpoch"
    return launches


def _close_launch(doc: dict[str, Any], name: str, at: float, by: usage.EndedBy) -> None:
    launches = _launches(doc)
    if not launches or launches[-1].ended is not None:
        return
    launches[-1].ended, launches[-1].ended_by = max(at, launches[-1].started), by
    _store_usage(doc, launches, name)


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


# The submitting CLI's side.

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
        if latest and entry["status"] in TERMINAL:
            if entry["status"] != "SUCCEEDED" or doc.get("status") != "SUCCEEDED":
                doc["status"] = entry["status"]
            if entry["status"] != "SUCCEEDED":
                doc["error"] = entry["message"]
                # The driver could not close its launch: it ended with the submission.
                if ended := usage.iso_seconds(entry["ended"]):
                    _close_launch(doc, spec.name, ended, "submission")
            doc.setdefault("finished", entry["ended"])
        if log_tail is not None:
            doc["logTail"] = log_tail.splitlines()[-LOG_TAIL_LINES:]
        doc["updated"] = now()

    return update(filesystem_for(uri), uri, change)


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
        if (doc := read(filesystem_for(uri), uri)) is not None:
            return uri, doc
    raise JobNotFoundError(
        f"no record for {name!r} under {root}/runs or {root}/sweeps; check the name and "
        "--storage (the spec's storage, or RAYFLEET_STORAGE)"
    )
