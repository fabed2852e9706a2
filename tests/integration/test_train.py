"""Training end to end: local Ray (2 CPUs), a real S3 server on 127.0.0.1, the digits data.

The uninterrupted run is the reference: every disrupted run (worker killed, storage outage,
corrupt newest checkpoint) must end with exactly its metrics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from rayfleet import record
from rayfleet.errors import StorageError
from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import list_checkpoints, verify
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.train.launcher import run_train_job

from ..conftest import BUCKET, REPO
from .launcher_events import Events, run_killing_rank1

pytestmark = pytest.mark.integration
SPEC = REPO / "jobs" / "digits" / "train.yaml"
EPOCHS = 12


def _job(name, *overrides):
    return load_spec(SPEC, [f"metadata.name={name}", f"spec.storage=s3://{BUCKET}", *overrides])


@pytest.fixture(scope="module")
def reference(ray_local, digits_uri):
    events = Events()
    result = run_train_job(_job("ref"), on_event=events)
    return result, events


def test_digits_trains_to_95_with_verified_checkpoints_in_s3(reference):
    result, events = reference
    assert result.metrics["val_accuracy"] >= 0.95, result.metrics
    assert result.epoch == EPOCHS - 1 and result.attempts == 1
    assert result.checkpoint_uri.startswith(f"s3://{BUCKET}/runs/ref/checkpoint_e000011-")
    fs = filesystem_for(_job("ref").run_uri())
    checkpoints = list_checkpoints(fs, f"{BUCKET}/runs/ref")
    assert len(checkpoints) == 3  # keep: 3
    assert all(verify(fs, path).ok for _, path in checkpoints)
    doc = record.read(fs, _job("ref").run_uri())
    assert doc["status"] == "SUCCEEDED" and doc["result"]["metrics"] == result.metrics
    assert sorted(events.epochs()) == list(range(EPOCHS))


def test_worker_killed_mid_run_resumes_with_identical_metrics(reference):
    result = run_killing_rank1(_job("killed"), after_epoch=4)
    assert result.metrics == reference[0].metrics


def test_s3_outage_during_checkpoint_still_finishes_identically(reference, s3):
    def outage(seconds):
        s3.stop()
        time.sleep(seconds)
        s3.restart()

    def stop_s3_after_epoch_3(ev, event):
        if event["type"] == "epoch" and event["epoch"] == 3 and not getattr(ev, "outage", None):
            ev.outage = threading.Thread(target=outage, args=(6,))
            ev.outage.start()

    events = Events(stop_s3_after_epoch_3)
    result = run_train_job(_job("outage"), on_event=events)
    events.outage.join()
    assert result.metrics == reference[0].metrics


def test_truncated_newest_checkpoint_is_skipped_on_resume(reference):
    job = _job("truncated", "spec.run.epochs=3")
    run_train_job(job)
    fs = filesystem_for(job.run_uri())
    (epoch, newest), *_ = list_checkpoints(fs, job.run_uri().fs_path)
    assert epoch == 2
    with fs.open_output_stream(f"{newest}/state.pt") as f:  # truncate in place
        f.write(b"truncated")

    events = Events()
    result = run_train_job(_job("truncated", "spec.run.epochs=5"), on_event=events)
    logs = events.logs()
    assert any(
        m.startswith(f"skipped {newest.rsplit('/', 1)[-1]}: state.pt has 9 bytes") for m in logs
    ), logs
    assert any(m.startswith("resuming from checkpoint_e000001-") for m in logs), logs
    assert sorted(events.epochs()) == [2, 3, 4]
    assert result.metrics == reference[1].epochs()[4]


@pytest.mark.slow  # jobs/custom also trains in test_jobs.py (submitted); plain loops: test_ray_loop
def test_user_entrypoint_trains_and_resumes(ray_local, digits_uri):
    spec = REPO / "jobs" / "custom" / "train.yaml"
    job = load_spec(spec, [f"spec.storage=s3://{BUCKET}"])
    result = run_train_job(job, sys_path=[str(spec.parent)])
    assert result.epoch == 2 and result.metrics["train_loss"] > 0
    again = Events()
    job = load_spec(spec, [f"spec.storage=s3://{BUCKET}", "spec.run.epochs=4"])
    result2 = run_train_job(job, sys_path=[str(spec.parent)], on_event=again)
    assert sorted(again.epochs()) == [3]
    assert result2.epoch == 3


def test_missing_bucket_fails_fast_before_ray(s3, tmp_path):
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayfleet.cli.main",
            "run",
            str(SPEC),
            "--set",
            "spec.storage=s3://no-such-bucket/team",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bucket 'no-such-bucket' does not exist" in lines[0], proc.stderr
    assert not (tmp_path / "ray").exists()  # Ray never started: no workers


def test_preflight_reports_bad_credentials(s3, monkeypatch):
    from rayfleet.storage.preflight import preflight
    from rayfleet.storage.uri import parse_uri

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(StorageError, match="no AWS credentials found"):
        preflight(parse_uri(f"s3://{BUCKET}/x"))
