"""One-worker loops trained in the calling process (rayfleet.train.inprocess): what a sweep
trial does when it needs no Ray Train run of its own. No Ray cluster: the loops below call
Ray Train's public API (`ray.train.report`, `get_checkpoint`, `get_context`) as a user's
loop does, and those calls must reach rayfleet's persistence."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from rayfleet.specs import parse_spec
from rayfleet.storage.checkpoints import MANIFEST, list_checkpoints, newest_verified, verify
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from rayfleet.train.inprocess import run_in_process, runs_in_process
from rayfleet.train.launcher import train_config
from rayfleet.tune.space import prepare

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]

# A plain Ray Train loop: resumes from get_checkpoint(), reports every epoch with a
# checkpoint and no epoch metric or folder name. `fail_after` (an epoch) makes the first
# attempt fail once that epoch is reported, after truncating the newest checkpoint if
# `truncate` is set; the marker file keeps it from failing again.
LOOP = textwrap.dedent(
    """
    import json, os, tempfile
    from pathlib import Path
    import ray.train

    def train(config):
        start, total = 0, 0.0
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                state = json.loads((Path(d) / "state.json").read_text())
            start, total = state["next"], state["total"]
        ctx = ray.train.get_context()
        assert (ctx.get_world_rank(), ctx.get_world_size()) == (0, 1)
        for epoch in range(start, config["epochs"]):
            total += epoch + 1
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"next": epoch + 1, "total": total}))
                ray.train.report({"total": total},
                                 checkpoint=ray.train.Checkpoint.from_directory(d))
            marker = Path(config["marker"])
            if epoch == config.get("fail_after") and not marker.exists():
                marker.write_text("failed once")
                if config.get("truncate"):
                    newest = sorted(p for p in Path(config["run"]).glob("checkpoint_*"))[-1]
                    (newest / "state.json").write_text("{")
                raise RuntimeError("worker lost")
            if epoch == config.get("stop_after"):
                raise SystemExit(0)
    """
)


def _job(tmp_path: Path, *, keep: int = 5, **config):
    (tmp_path / "user_loop.py").write_text(LOOP)
    run = tmp_path / "store" / "runs" / "loop"
    doc = {
        "apiVersion": "rayfleet.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "loop"},
        "spec": {
            "model": {
                "entrypoint": "user_loop:train",
                "config": {
                    "epochs": 4,
                    "marker": str(tmp_path / "failed"),
                    "run": str(run),
                    **config,
                },
            },
            "storage": str(tmp_path / "store"),
            "scaling": {"numWorkers": 1},
            "checkpoint": {"keep": keep},
        },
    }
    job = parse_spec(doc)
    return job, parse_uri(str(run))


def _train(tmp_path, job, run_uri, *, attempts: int = 1):
    """run_in_process, started again after a failure up to `attempts` times in all (what
    Tune does with an errored trial); the reports of every attempt."""
    reports = []
    for attempt in range(attempts):
        ref, _ = newest_verified(filesystem_for(run_uri), run_uri.fs_path)
        try:
            run_in_process(
                job,
                train_config(job, None, [str(tmp_path)], run_uri),
                run_uri=run_uri,
                next_epoch=ref.epoch + 1 if ref is not None else 0,  # as tune.trial does
                on_report=lambda m, epoch, path: reports.append((epoch, m["total"], path)),
            )
            return reports
        except RuntimeError:
            if attempt + 1 == attempts:
                raise
    return reports


def _manifest_meta(path: str) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())["meta"]


def test_every_report_is_persisted_stamped_and_counted_as_an_epoch(tmp_path):
    job, run_uri = _job(tmp_path)
    reports = _train(tmp_path, job, run_uri)
    assert [(e, t) for e, t, _ in reports] == [(0, 1.0), (1, 3.0), (2, 6.0), (3, 10.0)]
    fs = filesystem_for(run_uri)
    for epoch, total, path in reports:
        assert verify(fs, path).ok  # sizes and sha256 of what was stored
        meta = _manifest_meta(path)
        assert meta["epoch"] == epoch and meta["metrics"]["total"] == total
        assert meta["specHash"] == job.spec_hash()
    ref, skipped = newest_verified(fs, run_uri.fs_path)
    assert ref.path == reports[-1][2] and ref.epoch == 3 and not skipped


def test_a_failed_loop_started_again_resumes_from_the_newest_verified_checkpoint(tmp_path):
    job, run_uri = _job(tmp_path, fail_after=1)
    reports = _train(tmp_path, job, run_uri, attempts=2)
    # Epochs 0 and 1, then the restart resumes after epoch 1: same totals as uninterrupted.
    assert [(e, t) for e, t, _ in reports] == [(0, 1.0), (1, 3.0), (2, 6.0), (3, 10.0)]


def test_a_truncated_newest_checkpoint_is_skipped_on_restart(tmp_path):
    job, run_uri = _job(tmp_path, fail_after=1, truncate=True)
    reports = _train(tmp_path, job, run_uri, attempts=2)
    # Epoch 1's checkpoint no longer verifies: the restart resumes from epoch 0's.
    assert [(e, t) for e, t, _ in reports] == [(0, 1.0), (1, 3.0), (1, 3.0), (2, 6.0), (3, 10.0)]


def test_a_failed_loop_raises_its_error_and_still_prunes(tmp_path):
    job, run_uri = _job(tmp_path, fail_after=2, keep=1)
    with pytest.raises(RuntimeError, match="worker lost"):
        _train(tmp_path, job, run_uri)
    kept = list_checkpoints(filesystem_for(run_uri), run_uri.fs_path)
    assert len(kept) == 1 and _manifest_meta(kept[0][1])["epoch"] == 2


def test_tunes_stop_is_not_a_failure_and_checkpoint_keep_holds(tmp_path):
    job, run_uri = _job(tmp_path, stop_after=2, keep=1)
    with pytest.raises(SystemExit):
        _train(tmp_path, job, run_uri)
    assert not (tmp_path / "failed").exists()
    kept = list_checkpoints(filesystem_for(run_uri), run_uri.fs_path)
    assert len(kept) == 1 and _manifest_meta(kept[0][1])["epoch"] == 2


def _sweep_doc(**changes):
    doc = yaml.safe_load((REPO / "jobs" / "digits" / "sweep.yaml").read_text())
    doc["spec"].update(changes)
    return doc


@pytest.mark.parametrize(
    ("changes", "in_process"),
    [
        ({}, True),
        ({"trialLaunch": "rayTrain"}, False),
        ({"searchSpace": {"scaling.numWorkers": {"choice": [1, 2]}}}, False),
    ],
    ids=["one-worker", "asked-for-ray-train", "scaling-searched"],
)
def test_which_sweeps_train_their_trials_in_process(changes, in_process):
    from rayfleet.tune.runner import trials_in_process

    sweep = parse_spec(_sweep_doc(**changes), source="sweep.yaml")
    prep = prepare(sweep, source_dir=REPO / "jobs" / "digits")
    assert trials_in_process(prep) is in_process


@pytest.mark.parametrize(
    ("scaling", "expected"),
    [
        ({"numWorkers": 1}, True),
        ({"numWorkers": 2}, False),
        ({"numWorkers": 2, "minWorkers": 1}, False),
    ],
)
def test_only_a_fixed_single_worker_runs_in_process(scaling, expected):
    doc = yaml.safe_load((REPO / "jobs" / "digits" / "train.yaml").read_text())
    doc["spec"]["scaling"] = scaling
    assert runs_in_process(parse_spec(doc)) is expected


@pytest.mark.parametrize(
    ("changes", "relaunches"),
    [({}, 3), ({"maxTrialFailures": 1}, 7), ({"trialLaunch": "rayTrain"}, 0)],
    ids=["in-process", "in-process-with-trial-failures", "ray-train"],
)
def test_tune_relaunches_an_in_process_trial_as_often_as_its_run_would_restart(changes, relaunches):
    """The digits TrainJob allows 3 worker failures (failure.maxFailures default): in
    process, Tune makes those restarts (a lost node kills the trial's own process)."""
    from rayfleet.tune.runner import trial_relaunches, trials_in_process

    sweep = parse_spec(_sweep_doc(**changes), source="sweep.yaml")
    prep = prepare(sweep, source_dir=REPO / "jobs" / "digits")
    assert prep.base.spec.failure.max_failures == 3
    assert trial_relaunches(prep, trials_in_process(prep)) == relaunches
