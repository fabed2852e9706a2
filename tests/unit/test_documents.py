"""Run records and other shared documents: two writers never erase each other's update.

The race is forced, not hoped for: writer A reads the record, then (inside A's change, i.e.
between A's read and A's write) writer B completes a whole update. A plain read-modify-write
PUT then stores A's stale copy and B's key is gone; a compare-and-swap write must notice and
re-apply A's change on top of B's.
"""

from __future__ import annotations

import json
import threading

import pytest

from rayfleet import record
from rayfleet.storage import documents
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.lease import Lease, RunLockedError
from rayfleet.storage.uri import StorageURI, parse_uri


def _interleaved_updates(run_uri: StorageURI) -> dict:
    fs = filesystem_for(run_uri)
    record.update(fs, run_uri, lambda doc: doc.update(status="RUNNING"))
    b_done = threading.Event()

    def writer_a(doc):
        if not b_done.is_set():
            # B, e.g. the CLI noting a submission, writes while A (the driver) holds its copy.
            record.update(fs, run_uri, lambda d: d.update(submissions=[{"id": "job-1"}]))
            b_done.set()
        doc.setdefault("epochs", []).append({"epoch": 0})

    record.update(fs, run_uri, writer_a)
    return record.read(fs, run_uri)


@pytest.mark.unit
@pytest.mark.security
def test_local_record_keeps_both_writers_updates(tmp_path):
    doc = _interleaved_updates(parse_uri(str(tmp_path / "runs" / "r1")))
    assert doc["submissions"] == [{"id": "job-1"}], "the CLI's update was lost"
    assert doc["epochs"] == [{"epoch": 0}] and doc["status"] == "RUNNING"


@pytest.mark.integration
@pytest.mark.security
def test_s3_record_keeps_both_writers_updates(s3):
    from tests.conftest import BUCKET

    doc = _interleaved_updates(parse_uri(f"s3://{BUCKET}/records-race/runs/r1"))
    assert doc["submissions"] == [{"id": "job-1"}], "the CLI's update was lost"
    assert doc["epochs"] == [{"epoch": 0}] and doc["status"] == "RUNNING"


@pytest.mark.unit
def test_create_only_and_stale_version_conflict(tmp_path):
    uri = parse_uri(str(tmp_path / "doc.json"))
    first = documents.write(uri, b'{"a": 1}', expect=None)
    with pytest.raises(documents.Conflict):
        documents.write(uri, b'{"a": 2}', expect=None)  # create-only, but it exists
    documents.write(uri, b'{"a": 3}', expect=first)
    with pytest.raises(documents.Conflict):
        documents.write(uri, b'{"a": 4}', expect=first)  # stale version
    assert documents.read(uri).json() == {"a": 3}


@pytest.mark.unit
def test_local_writes_leave_no_partial_or_temp_files(tmp_path):
    uri = parse_uri(str(tmp_path / "runs" / "r2"))
    fs = filesystem_for(uri)
    for i in range(5):
        record.update(fs, uri, lambda doc, i=i: doc.update(retries=i))
    names = sorted(p.name for p in (tmp_path / "runs" / "r2").iterdir())
    assert names == ["record.json", "record.json.lock"]
    assert record.read(fs, uri)["retries"] == 4


@pytest.mark.integration
@pytest.mark.security
def test_s3_lease_is_exclusive_and_released(s3):
    from tests.conftest import BUCKET

    run = parse_uri(f"s3://{BUCKET}/lease-test/runs/r")
    with Lease(run, what="run r", ttl_s=30):
        with pytest.raises(RunLockedError):
            Lease(run, what="run r", ttl_s=30).acquire(wait_s=0)
    with Lease(run, what="run r", ttl_s=30):  # released: the next driver gets it at once
        pass


@pytest.mark.unit
def test_a_record_that_is_not_a_run_record_is_refused_in_one_line(tmp_path):
    from rayfleet.errors import StorageError

    uri = parse_uri(str(tmp_path / "runs" / "r3"))
    (tmp_path / "runs" / "r3").mkdir(parents=True)
    (tmp_path / "runs" / "r3" / "record.json").write_text('{"status": "OK", "epohcs": []}')
    with pytest.raises(StorageError, match=r"not a valid run record \(epohcs: Extra inputs"):
        record.read(filesystem_for(uri), uri)


@pytest.mark.unit
def test_record_keys_are_camel_case_and_old_snake_case_results_still_read(tmp_path):
    from rayfleet.specs import load_spec
    from rayfleet.train.launcher import RunResult
    from tests.conftest import REPO

    uri = parse_uri(str(tmp_path / "runs" / "r4"))
    fs = filesystem_for(uri)
    old = {"result": {"name": "r4", "run_uri": "/x", "checkpoint_uri": "/x/c", "elapsed_s": 1.5}}
    (tmp_path / "runs" / "r4").mkdir(parents=True)
    (tmp_path / "runs" / "r4" / "record.json").write_text(json.dumps(old))
    assert record.read(fs, uri)["result"]["checkpointUri"] == "/x/c"

    job = load_spec(REPO / "jobs" / "digits" / "train.yaml")
    result = RunResult("r4", "/x", "/x/d", 3, {"loss": 0.1}, 1, 2.0)
    doc = record.write(fs, uri, job, status="SUCCEEDED", result=result)
    assert doc["result"]["checkpointUri"] == "/x/d" and doc["result"]["elapsedS"] == 2.0
    assert (
        "checkpoint_uri" not in json.loads((tmp_path / "runs/r4/record.json").read_text())["result"]
    )
