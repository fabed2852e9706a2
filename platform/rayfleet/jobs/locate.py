"""Where a submitted run lives, and keeping its record current with what the cluster says.

Used by `rayfleet jobs ...`; kept out of the CLI so that scripts and the kubectl plugin can
call the same logic.
"""

from __future__ import annotations

import os

from rayfleet import record
from rayfleet.errors import BadInputError
from rayfleet.jobs.cluster import connect
from rayfleet.jobs.target import Target
from rayfleet.record import refresh
from rayfleet.specs import parse_spec
from rayfleet.specs.base import resolve_storage
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri


def run_storage(name: str, target: Target | None) -> str:
    """The storage URI a run lives in, when the user did not say: the target context's
    storage, the storage the cluster's newest job of that name was submitted with, or
    RAYFLEET_STORAGE. `target` is None when no cluster was named (no --address, --context
    or RAY_ADDRESS)."""

    if target is not None:
        if target.storage:
            return target.storage

        job = connect(target).find(name)
        if found := (job.metadata or {}).get("rayfleet.storage"):
            return found
    if os.environ.get("RAYFLEET_STORAGE"):
        return str(resolve_storage(None))
    raise BadInputError(
        f"where is run {name}? pass --storage s3://bucket/prefix (the spec's storage), set "
        "RAYFLEET_STORAGE, or --address of the cluster that ran it"
    )


def refresh_record(cluster, job, *, with_logs: bool = False) -> str | None:
    """Bring the run record of a submitted job up to date with the cluster's view of it.

    Returns None, or a one-line warning when the record could not be updated: callers show
    the job's status anyway (the status matters more than the record)."""

    meta = job.metadata or {}
    if not meta.get("rayfleet.record"):
        return None
    uri = parse_uri(meta["rayfleet.record"])
    try:
        doc = record.read(filesystem_for(uri), uri)
        if not doc or "spec" not in doc:
            return None
        refresh(cluster, job, uri, parse_spec(doc["spec"], source=str(uri)), with_logs=with_logs)
    except Exception as exc:  # noqa: BLE001 - showing the status matters more than the record
        return f"could not update {uri}/record.json: {exc}"
    return None
