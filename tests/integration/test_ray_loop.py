"""A loop written only against Ray Train's public API (jobs/ray-loop/digits_loop.py), run by
rayfleet unchanged: progress and the run record show what it reports, its checkpoints get
manifests after Ray Train persists them, and `ray.train.get_checkpoint()` hands it the newest
verified one after a worker restart or in a later run.
"""

from __future__ import annotations

import os
import signal

import pytest
from typer.testing import CliRunner

from rayfleet import record
from rayfleet.cli.main import app
from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import MANIFEST, UNKNOWN_EPOCH, list_checkpoints, verify
from rayfleet.storage.filesystem import filesystem_for, read_bytes
from rayfleet.train.launcher import run_train_job

from ..conftest import BUCKET, REPO
from .launcher_events import Events

pytestmark = pytest.mark.integration
SPEC = REPO / "jobs" / "ray-loop" / "train.yaml"
EPOCHS = 4


def _job(name, *overrides):
    return load_spec(SPEC, [f"metadata.name={name}", f"spec.storage=s3://{BUCKET}", *overrides])


def _run(job, events=None):
    return run_train_job(job, on_event=events, sys_path=[str(SPEC.parent)])


@pytest.fixture(scope="module")
def reference(ray_local):
    events = Events()
    return _run(_job("loop-ref"), events), events


def test_plain_loop_reports_every_metric_and_gets_verified_checkpoints(reference, tmp_path_factory):
    result, events = reference
    assert sorted(events.epochs()) == list(range(EPOCHS))
    for epoch, metrics in events.epochs().items():
        assert {"train_loss", "val_accuracy"} <= set(metrics), metrics
        assert metrics["epoch"] == epoch
    assert result.epoch == EPOCHS - 1 and result.metrics == events.epochs()[EPOCHS - 1]
    assert result.metrics["val_accuracy"] >= 0.9, result.metrics

    fs = filesystem_for(_job("loop-ref").run_uri())
    run_path = f"{BUCKET}/runs/loop-ref"
    checkpoints = list_checkpoints(fs, run_path)
    assert len(checkpoints) == 3  # spec.checkpoint.keep
    assert all(epoch == UNKNOWN_EPOCH for epoch, _ in checkpoints)  # Ray's own names
    assert all(verify(fs, path).ok for _, path in checkpoints)
    assert result.checkpoint_uri == f"s3://{checkpoints[0][1]}"
    assert b'"specHash"' in read_bytes(fs, f"{checkpoints[0][1]}/{MANIFEST}")

    doc = record.read(fs, _job("loop-ref").run_uri())
    assert doc["status"] == "SUCCEEDED"
    assert [e["epoch"] for e in doc["epochs"]] == list(range(EPOCHS))
    assert doc["epochs"][-1]["metrics"]["val_accuracy"] == result.metrics["val_accuracy"]
    # Usage: one launch, closed by the driver, 2 workers x 1 CPU for its wall time.
    used = doc["usage"]
    (launch,) = used["launches"]
    assert (launch["workers"], launch["cpusPerWorker"], launch["endedBy"]) == (2, 1, "driver")
    # The launch runs from the record's RUNNING write (after preflight) to its final write.
    assert result.elapsed_s / 2 < used["wallS"] < result.elapsed_s + 10
    assert used["workerS"] == 2 * used["wallS"]
    assert used["cpuS"] == used["workerS"] and used["gpuS"] == 0 and used["cost"] is None
    # Busy time: each worker's own CPU time from rayfleet's wrapper, its latest cumulative
    # report kept per rank; two 1-CPU workers cannot use more than they requested.
    assert sorted((b["launch"], b["rank"]) for b in used["busy"]) == [(1, 0), (1, 1)]
    assert all(b["cpuS"] > 0 and b["gpuS"] is None for b in used["busy"]), used["busy"]
    assert 0 < used["busyCpuS"] <= used["cpuS"] * 1.05 and used["busyGpuS"] is None
    # This machine's CPU node says no accelerator and no market: the price table's hold.
    assert used["nodes"] == {"accelerator": None, "market": None, "note": None}
    out = CliRunner().invoke(app, ["jobs", "describe", "loop-ref", "--storage", f"s3://{BUCKET}"])
    assert out.exit_code == 0 and "  usage: wall " in out.output, out.output
    assert "  usage: busy CPU " in out.output and "% of requested)" in out.output, out.output
    spot = tmp_path_factory.mktemp("prices") / "spot.yaml"
    spot.write_text("market: spot\ncpuHour: {onDemand: 0.04, spot: 0.01}\n")
    out = CliRunner().invoke(
        app, ["jobs", "describe", "loop-ref", "--storage", f"s3://{BUCKET}", "--prices", str(spot)]
    )
    assert out.exit_code == 0 and "(spot: 0.01/CPU-h)" in out.output, out.output


def test_killed_worker_resumes_the_plain_loop_with_identical_metrics(reference):
    def kill_rank1_after_epoch_1(ev, event):
        if event["type"] == "epoch" and event["epoch"] == 1 and not getattr(ev, "killed", 0):
            ev.killed = ev.pids[1]
            os.kill(ev.pids[1], signal.SIGKILL)

    events = Events(kill_rank1_after_epoch_1)
    result = _run(_job("loop-killed"), events)
    assert getattr(events, "killed", 0)
    assert any(m.startswith("resuming from checkpoint_") for m in events.logs()), events.logs()
    assert result.metrics == reference[0].metrics
    # The killed worker's last busy report is kept; its replacement counts on its own.
    job = _job("loop-killed")
    busy = record.read(filesystem_for(job.run_uri()), job.run_uri())["usage"]["busy"]
    ranks1 = [b for b in busy if b["rank"] == 1]
    assert any(f":{events.killed}:" in b["worker"] for b in ranks1), (
        events.killed,
        events.pids,
        busy,
    )
    assert len(ranks1) >= 2 and {b["launch"] for b in busy} == {1}, busy


def test_more_epochs_continue_from_the_newest_verified_checkpoint(reference):
    """A second run with more epochs continues (it does not start over) from the newest
    checkpoint that verifies: the newest one, truncated here, is skipped with why."""
    job = _job("loop-ref", f"spec.model.config.epochs={EPOCHS + 1}")
    fs = filesystem_for(job.run_uri())
    (_, newest), *_ = list_checkpoints(fs, job.run_uri().fs_path)
    with fs.open_output_stream(f"{newest}/model.pt") as f:  # truncate the last epoch's weights
        f.write(b"truncated")
    events = Events()
    result = _run(job, events)
    logs = events.logs()
    assert any(m.startswith(f"skipped {newest.rsplit('/', 1)[-1]}: model.pt has 9") for m in logs)
    assert sorted(events.epochs()) == [EPOCHS - 1, EPOCHS]  # from the epoch-2 checkpoint
    assert events.epochs()[EPOCHS - 1] == reference[1].epochs()[EPOCHS - 1]
    assert result.epoch == EPOCHS


def test_a_loop_that_reports_no_checkpoint_succeeds_and_says_so(ray_local):
    events = Events()
    job = _job(
        "loop-nockpt",
        "spec.model.config.checkpoint=false",
        "spec.model.config.epochs=1",
        "spec.scaling.numWorkers=1",
    )
    result = _run(job, events)
    assert result.checkpoint_uri is None and result.epoch == 0
    assert set(result.metrics) >= {"train_loss", "val_accuracy"}
    assert "no checkpoint reported: nothing to resume from" in events.logs()


def _sweep_cli(*overrides: str) -> str:
    """jobs/ray-loop/sweep.yaml through the CLI (its own embedded Ray); its output."""
    import subprocess
    import sys

    env = {**os.environ, "RAYFLEET_STORAGE": f"s3://{BUCKET}"}
    command = [sys.executable, "-m", "rayfleet", "sweep", str(SPEC.parent / "sweep.yaml")]
    proc = subprocess.run(
        [*command, *(f"--set={o}" for o in overrides)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_a_sweep_over_the_plain_loop_optimises_what_it_reports_in_process_or_not(s3):
    """The loop's own val_accuracy is the sweep metric and best.json names a verified
    checkpoint holding it, whether the one-worker trials train in their Tune trials' own
    processes (trialLaunch: auto) or each in a Ray Train run (rayTrain): the same numbers."""
    from rayfleet.storage.uri import parse_uri
    from rayfleet.tune import results

    values = {}
    for launch, said in (("auto", "in the trial's process"), ("rayTrain", "a Ray Train run each")):
        name = f"ray-loop-sweep-{launch.lower()}"
        out = _sweep_cli(f"metadata.name={name}", f"spec.trialLaunch={launch}")
        assert said in " ".join(out.split()), out[:400]  # the first line (it may wrap)
        sweep = parse_uri(f"s3://{BUCKET}/sweeps/{name}")
        table, best = results.require_results(sweep, name)
        assert [t.state for t in table.trials] == ["DONE", "DONE"]
        assert all(t.epochs_done == 2 and t.value is not None for t in table.trials), table
        check = verify(filesystem_for(sweep), parse_uri(best.checkpoint).fs_path)
        assert check.ok, check.reason
        assert check.manifest["meta"]["metrics"]["val_accuracy"] == best.value
        assert best.value == max(t.value for t in table.trials)
        values[launch] = sorted((t.params["model.config.lr"], t.value) for t in table.trials)
    assert values["auto"] == values["rayTrain"]
