"""What the sweep driver records about each trial as it runs: trial run records, and MLflow.

Both are driver-side Tune callbacks (trials never write either):

- `SweepRecorder` keeps a run record per trial at `<sweep>/<trial_id>/train/record.json`
  (`rayfleet.record`): the trial's TrainJob, each epoch's metrics as Tune receives them, and
  its end (SUCCEEDED, STOPPED by the scheduler, FAILED), with its workers' busy time as the
  runner's busy channel last heard it (`busy_sink`; `store_busy` once more at the end).
  `rayfleet plot --sweep` draws the trials' curves from these, with no cluster and no
  MLflow. The updates go through a `BackgroundWriter`: Tune schedules every trial from the
  thread that calls its callbacks.
- `MlflowSweep`, when tracking is configured (the SweepJob's `spec.tracking`, else the
  TrainJob's, else $MLFLOW_TRACKING_URI): one parent run per sweep launch (the sweep spec as
  params) with one child run per trial (its resolved TrainJob as params, per-epoch metrics,
  its state, its newest verified checkpoint); at the end the parent gets trials.json and
  best.json. All MLflow calls go through `rayfleet.tracking.Tracker`: never in the way.

Tune pickles its callbacks into the experiment (never read back), so the callbacks carry
plain data and find the driver's live state in `_LIVE`, by sweep URI (as runner's sinks do).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from ray.tune import Callback

from rayfleet import record, tracking, usage
from rayfleet.errors import StorageError
from rayfleet.specs import TrainJob, parse_spec
from rayfleet.storage.background import BackgroundWriter
from rayfleet.storage.checkpoints import newest_verified
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import StorageURI, parse_uri
from rayfleet.tune import results
from rayfleet.tune.space import PreparedSweep, trial_doc
from rayfleet.tune.trial import EPOCHS_DONE, TRIAL_ID_KEY, sweep_trial_id, trial_name, trial_run_uri

log = logging.getLogger(__name__)
# Tune's own result keys: not the training's metrics.
_TUNE_KEYS = frozenset(
    {
        "training_iteration",
        "time_total_s",
        "episodes_total",
        "timesteps_total",
        "time_this_iter_s",
        "timestamp",
        "time_since_restore",
        "timesteps_since_restore",
        "iterations_since_restore",
        "pid",
        "done",
        EPOCHS_DONE,
    }
)


class _Live:
    """The driver's state for one sweep: the prepared sweep, the tracker, trials seen."""

    def __init__(self, prep: PreparedSweep, tracker: tracking.Tracker | None, launch: int):
        self.prep, self.tracker, self.launch = prep, tracker, launch
        self.jobs: dict[str, TrainJob] = {}
        self.epochs: dict[str, int] = {}
        self.records = BackgroundWriter("rayfleet-trial-records")
        # The trials' workers' busy reports, by trial run URI (runner's busy channel).
        self.busy: dict[str, usage.BusyTally] = defaultdict(usage.BusyTally)

    def reports(self, run_uri: StorageURI) -> list[dict[str, Any]]:
        tally = self.busy.get(str(run_uri))
        return tally.reports() if tally is not None else []


_LIVE: dict[str, _Live] = {}


def callbacks(prep: PreparedSweep, launch_number: int) -> list[Callback]:
    """The callbacks a sweep launch runs with (trial records always; MLflow when configured)."""
    target = tracking.target_for(prep.sweep.spec.tracking, prep.base.spec.tracking)
    tracker = tracking.Tracker(target) if target else None
    _LIVE[str(prep.uri)] = _Live(prep, tracker, launch_number)
    if tracker is not None:
        spec = prep.sweep.model_dump(mode="json", by_alias=True)["spec"]
        spec.pop("tracking", None)
        tracker.start_run(
            "sweep",
            name=f"{prep.sweep.name}" + (f" (launch {launch_number})" if launch_number > 1 else ""),
            params=tracking.flatten({**spec, "trainJob": prep.base_doc["spec"]}),
            tags={
                "rayfleet.kind": "SweepJob",
                "rayfleet.name": prep.sweep.name,
                "rayfleet.sweep_uri": str(prep.uri),
                "rayfleet.launch": launch_number,
                "rayfleet.metric": prep.sweep.spec.metric,
                "rayfleet.mode": prep.sweep.spec.mode,
            },
        )
    return [SweepRecorder(str(prep.uri))]


def busy_sink(prep: PreparedSweep):
    """Where the runner's busy channel puts a trial worker's `usage` event: its trial's
    tally, by the run URI the event names (the records take it with each epoch and end)."""
    key = str(prep.uri)

    def note(event: dict[str, Any]) -> None:
        if (live := _LIVE.get(key)) is not None and event.get("run"):
            live.busy[str(event["run"])].note(event)

    return note


def store_busy(prep: PreparedSweep) -> None:
    """After the launch's trials: every trial's latest busy reports into its record (what
    arrived after its last epoch or its end, e.g. from workers of a trial Tune stopped)."""
    if (live := _LIVE.get(str(prep.uri))) is None:
        return
    for run, tally in list(live.busy.items()):
        uri = parse_uri(run)
        try:
            record.note_busy(filesystem_for(uri), uri, tally.reports())
        except (OSError, StorageError) as exc:  # bookkeeping never fails a sweep
            log.warning("%s: could not record its busy time: %s", run, exc)


def finish(prep: PreparedSweep) -> None:
    """End the sweep's parent run: its table and best trial attached, status from the table."""
    live = _LIVE.pop(str(prep.uri), None)
    if live is None:
        return
    live.records.close()
    if live.tracker is None:
        return
    tracker = live.tracker
    try:
        table = results.read_table(prep.uri)
        best = results.read_best(prep.uri)
    except StorageError as exc:
        log.warning("MLflow tracking: could not read the sweep's results: %s", exc)
        table = best = None
    if table is not None:
        tracker.log_dict("sweep", table.model_dump(mode="json"), results.TRIALS_FILE)
        tracker.set_tags("sweep", {f"rayfleet.trials.{k}": v for k, v in table.counts().items()})
    if best is not None:
        tracker.log_dict("sweep", best.model_dump(mode="json"), results.BEST_FILE)
        tracker.set_tags(
            "sweep",
            {
                "rayfleet.best_trial": best.trial_id,
                "rayfleet.best_value": best.value,
                "rayfleet.best_checkpoint": best.checkpoint,
            },
        )
    tracker.end_run("sweep", tracking.FINISHED if best is not None else tracking.FAILED)
    tracker.close()


class SweepRecorder(Callback):
    """Driver-side Tune callback: trial records, and MLflow child runs when tracking is on."""

    def __init__(self, key: str):
        self.key = key

    def _live(self) -> _Live | None:
        return _LIVE.get(self.key)

    def on_trial_start(self, iteration, trials, trial, **info):
        if (live := self._live()) is None:
            return
        trial_id = sweep_trial_id(trial.config, trial.trial_id)
        params = {k: v for k, v in trial.config.items() if k != TRIAL_ID_KEY}
        try:
            doc = trial_doc(live.prep.base_doc, params, trial_name(trial_id))
            job = parse_spec(doc, source=trial_id)
        except Exception as exc:  # noqa: BLE001 - bookkeeping never fails a sweep
            log.warning("trial %s: no run record: %s", trial_id, exc)
            return
        live.jobs[trial_id] = job
        at = time.time()  # (the write is queued: it may run later)
        self._record(
            live, trial_id, lambda fs, uri: record.write(fs, uri, job, status="RUNNING", at=at)
        )
        if live.tracker is not None:
            spec = job.model_dump(mode="json", by_alias=True)["spec"]
            spec.pop("tracking", None)
            live.tracker.start_run(
                f"trial:{trial_id}",
                name=trial_id,
                params=tracking.flatten(spec),
                tags={
                    "rayfleet.kind": "trial",
                    "rayfleet.trial_id": trial_id,
                    "rayfleet.sweep": live.prep.sweep.name,
                    "rayfleet.run_uri": str(trial_run_uri(live.prep.uri, trial_id)),
                    **{f"rayfleet.param.{k}": v for k, v in params.items()},
                },
                parent="sweep",
            )

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if (live := self._live()) is None:
            return
        trial_id = sweep_trial_id(trial.config, trial.trial_id)
        done = result.get(EPOCHS_DONE)
        if not isinstance(done, int) or done < 1:
            return
        epoch = done - 1
        live.epochs[trial_id] = done
        metrics = {
            k: v for k, v in result.items() if k not in _TUNE_KEYS and isinstance(v, (int, float))
        }
        self._record(
            live,
            trial_id,
            lambda fs, uri: record.add_epoch(
                fs, uri, epoch=epoch, metrics=metrics, busy=live.reports(uri)
            ),
        )
        if live.tracker is not None:
            live.tracker.log_metrics(f"trial:{trial_id}", tracking.numeric(metrics), epoch)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, error=None)

    def on_experiment_end(self, trials, **info):
        if (live := self._live()) is not None:
            live.records.close()  # every trial record written before the driver moves on

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, error=trial.error_file or "trial failed")

    def _ended(self, trial, error: str | None) -> None:
        if (live := self._live()) is None:
            return
        trial_id = sweep_trial_id(trial.config, trial.trial_id)
        done = live.epochs.get(trial_id, 0)
        job = live.jobs.get(trial_id)
        if error is not None:
            state, status = "ERROR", "FAILED"
        elif done >= (job or live.prep.base).epochs_planned():
            state, status = "DONE", "SUCCEEDED"
        else:
            state, status = "STOPPED", "STOPPED"  # ended early by the scheduler (ASHA, median)
        if job is not None:
            fields: dict[str, Any] = {"error": error} if error else {}
            at = time.time()
            self._record(
                live,
                trial_id,
                lambda fs, uri: record.write(
                    fs, uri, job, status=status, busy=live.reports(uri), at=at, **fields
                ),
            )
        if live.tracker is None:
            return
        handle = f"trial:{trial_id}"
        live.tracker.set_tags(handle, {"rayfleet.state": state, "rayfleet.epochs_done": done})
        run_uri = trial_run_uri(live.prep.uri, trial_id)

        def checkpoint():
            ref, _ = newest_verified(filesystem_for(run_uri), run_uri.fs_path)
            if ref is None:
                return None
            uri = str(run_uri.at(ref.path))
            return lambda c, runs: c.set_tag(runs[handle], "rayfleet.checkpoint_uri", uri)

        live.tracker.later(handle, "find the trial's checkpoint", checkpoint)
        live.tracker.end_run(handle, tracking.FAILED if error else tracking.FINISHED)

    @staticmethod
    def _record(live: _Live, trial_id: str, change) -> None:
        uri: StorageURI = trial_run_uri(parse_uri(str(live.prep.uri)), trial_id)
        live.records.submit(
            f"trial {trial_id}: could not update its run record",
            lambda: change(filesystem_for(uri), uri),
        )
