"""A one-worker TrainJob trained in the calling process, without a Ray Train controller.

Why: every Ray Train `fit()` starts its own processes — the controller, a placement-group
cleaner, a synchronization actor, a dataset manager, the worker — each importing Ray, most
of them torch too. On the 2-core VM a tiny sweep trial spent ~20 s of its ~26 s there, for
0.05 s of training (README, "Sweeps"). A one-worker trial needs none of it: its Tune trial
is already a Ray actor with the worker's resources, so the loop runs right there, and Tune
reuses that actor (with torch and the loop's module imported) for the next trial.

It is Ray Train's own local mode (`ScalingConfig(num_workers=0)`: the loop runs in the
caller, `ray.train.*` answered by a `LocalTrainFnUtils`) with what that mode leaves out and
rayfleet needs, so the guarantees hold as under Ray Train:

- each reported checkpoint is persisted in the run folder under the name Ray Train would
  give it, its manifest last (`checkpoints.upload`; a plain Ray Train loop's gets one
  hashed from the stored files, as `train.reporting` stamps them under Ray Train);
- `ray.train.get_checkpoint()` and `session.resume_checkpoint()` hand the newest *verified*
  checkpoint, so a loop started again after a failure continues from it, as after Ray
  Train's worker-group restart (a sweep's Tune relaunches a failed trial up to
  `failure.maxFailures` more times than its `maxTrialFailures`: see tune.runner);
- every report reaches `on_report` with its epoch counted as `train.reporting` counts it.

What it does not do: elastic scaling (one worker) and preemption notices (Ray Train's drain
watcher is not running; a preempted trial fails and Tune relaunches it, from its newest
verified checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ray.train import Checkpoint
from ray.train.v2._internal.execution.storage import StorageContext
from ray.train.v2._internal.execution.train_fn_utils import LocalTrainFnUtils, set_train_fn_utils

from rayfleet.specs import TrainJob
from rayfleet.storage.checkpoints import (
    SPEC_HASH_KEY,
    prune,
    upload,
)
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import StorageURI
from rayfleet.train.preemption import PREEMPTION_KEY
from rayfleet.train.reporting import EPOCH_KEY, report_epoch
from rayfleet.train.session import worker_main

log = logging.getLogger(__name__)

# (metrics with their epoch, the epoch, the persisted checkpoint's path or None)
ReportHandler = Callable[[dict[str, Any], int, str | None], None]


def runs_in_process(job: TrainJob) -> bool:
    """Whether a trial of `job` can train in its Tune trial's own process: one worker, a
    fixed count (an elastic range needs Ray Train to resize)."""
    scaling = job.spec.scaling
    return scaling.num_workers == 1 and not scaling.elastic


class InProcessReports(LocalTrainFnUtils):
    """What `ray.train.report` / `get_checkpoint` / `get_context` reach in an in-process run:
    Ray Train's local-mode utilities (rank 0 of 1), persisting what is reported."""

    def __init__(
        self,
        *,
        run_uri: StorageURI,
        spec_hash: str,
        next_epoch: int,
        on_report: ReportHandler,
    ) -> None:
        super().__init__(experiment_name=run_uri.fs_path.rsplit("/", 1)[-1])
        self.fs = filesystem_for(run_uri)
        self.run_path = run_uri.fs_path
        self.spec_hash = spec_hash
        self.next_epoch = next_epoch  # the ordinal of the next report without an epoch
        self.on_report = on_report
        self.persisted: str | None = None  # the folder name of the newest one stored here
        self._checkpoint: Checkpoint | None = None

    def resume_from(self, checkpoint: Checkpoint | None, next_epoch: int | None) -> None:
        """What the loop resumes from, installed by `session` before the loop starts: the
        newest verified checkpoint (`get_checkpoint()` hands it) and the epoch after it,
        which numbers the loop's next report when it reports no `epoch` of its own."""
        self._checkpoint = checkpoint
        if next_epoch is not None:
            self.next_epoch = next_epoch

    def get_checkpoint(self) -> Checkpoint | None:
        return self._checkpoint

    def report(
        self,
        metrics: dict[str, Any],
        checkpoint: Checkpoint | None = None,
        checkpoint_dir_name: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Persist the checkpoint (synchronously: the loop goes on once it is stored and
        stamped), then hand the report on. Upload modes and validation do not apply."""
        first = dict(metrics)
        just_in_time = PREEMPTION_KEY in first
        epoch = report_epoch(first, self.next_epoch)
        if not just_in_time:
            self.next_epoch = epoch + 1
            first.setdefault(EPOCH_KEY, epoch)
        path = None
        if checkpoint is not None:
            name = checkpoint_dir_name or StorageContext.make_default_checkpoint_dir_name()
            path = f"{self.run_path}/{name}"
            meta = {EPOCH_KEY: epoch, "metrics": first, SPEC_HASH_KEY: self.spec_hash}
            upload(checkpoint.path, self.fs, path, meta)
            self.persisted = name
            self._checkpoint = Checkpoint(path, filesystem=self.fs)
        super().report(first, checkpoint)
        if not just_in_time:
            self.on_report(first, epoch, path)


def run_in_process(
    job: TrainJob,
    config: dict[str, Any],
    *,
    run_uri: StorageURI,
    next_epoch: int,
    on_report: ReportHandler,
) -> None:
    """Train `job`'s loop here once (`config`: what `session.worker_main` takes), resuming
    from the run's newest verified checkpoint. Its error, if any, is raised: the caller
    starts it again (a sweep: Tune relaunches the trial, also when its process or node
    died, failure.maxFailures more times than the sweep's maxTrialFailures), which resumes
    from the newest verified checkpoint as Ray Train's worker-group restart does. Tune's
    stop (SystemExit from `tune.report`) ends it the same way. Checkpoints past
    checkpoint.keep are pruned when the loop is over, however it ended."""
    reports = InProcessReports(
        run_uri=run_uri, spec_hash=job.spec_hash(), next_epoch=next_epoch, on_report=on_report
    )
    try:
        with _ray_train_answers(reports):
            worker_main(config)
    finally:
        _prune(job, run_uri, reports)


def _prune(job: TrainJob, run_uri: StorageURI, reports: InProcessReports) -> None:
    """checkpoint.keep, as Ray Train's num_to_keep keeps it (and torn folders cleared)."""
    protect = (reports.persisted,) if reports.persisted else ()
    try:
        prune(filesystem_for(run_uri), run_uri.fs_path, job.spec.checkpoint.keep, protect=protect)
    except OSError as exc:
        log.warning("could not prune %s: %s", run_uri, exc)


@contextmanager
def _ray_train_answers(reports: InProcessReports) -> Iterator[None]:
    """While the loop runs, `ray.train.report`, `get_checkpoint`, `get_context` reach
    `reports`. Ray 2.60 refuses those calls inside a Tune function (it tells Tune users to
    call `ray.tune` instead), judging by the Tune session's `world_rank` being None: a loop
    written for Ray Train would fail in-process. So the session counts as rank 0 of a
    training run for that time; nothing else reads that field in Train V2 (the sweep tests
    over jobs/ray-loop, a plain Ray Train loop, fail if Ray changes this)."""
    from ray.train._internal.session import get_session

    tune_session = get_session()
    rank = getattr(tune_session, "world_rank", None)
    set_train_fn_utils(reports)
    if tune_session is not None:
        tune_session.world_rank = 0
    try:
        yield
    finally:
        if tune_session is not None:
            tune_session.world_rank = rank
        set_train_fn_utils(None)
