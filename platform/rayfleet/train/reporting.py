"""What happens on Ray Train's controller after every `ray.train.report`, for any loop.

A loop written only against Ray Train's public API (`ray.train.report(metrics,
checkpoint=Checkpoint.from_directory(d))`) never calls rayfleet, so rayfleet learns about its
reports here, in a Ray Train `UserCallback` that runs on the controller once every worker
has reported and the checkpoint is persisted and registered:

- the checkpoint gets its rayfleet manifest (sizes and sha256 of the stored files, the
  epoch, rank 0's metrics, the spec hash), so "newest verified checkpoint" holds for it as for
  rayfleet's own (`session.report` writes the manifest before upload; those are left as
  they are);
- rank 0's metrics go to the driver as an `epoch` event: the progress line, the run record
  and sweep metrics see every reported metric, whichever style the loop uses.

A report's epoch is its `epoch` metric when the loop reports one (rayfleet's helpers always
do), else its ordinal among the run's reports, counted on from the checkpoint the run
resumed from.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.train import Checkpoint
from ray.train.v2.api.callback import UserCallback

from rayfleet.storage.checkpoints import SPEC_HASH_KEY, stamp_persisted
from rayfleet.train.preemption import PREEMPTION_KEY

log = logging.getLogger(__name__)

EPOCH_KEY = "epoch"


def report_epoch(metrics: dict[str, Any], ordinal: int) -> int:
    """The epoch a report stands for: its integer `epoch` metric, else its ordinal."""
    value = metrics.get(EPOCH_KEY)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return ordinal


class RunReporter(UserCallback):
    """Stamps manifests on persisted checkpoints and forwards rank 0's metrics.

    Built by the launcher and pickled to the controller; `channel` is the driver's
    ProgressChannel actor (in a sweep trial the sweep driver's, which only keeps the
    workers' busy time from it: the trial's metrics go to Tune).
    """

    def __init__(
        self, *, channel: Any, spec_hash: str, epochs: int | None, next_epoch: int = 0
    ) -> None:
        self.channel = channel
        self.spec_hash = spec_hash
        self.epochs = epochs
        self.next_epoch = next_epoch  # the ordinal of the next report without an epoch

    def after_report(
        self,
        run_context: Any,
        metrics: list[dict[str, Any]],
        checkpoint: Checkpoint | None,
    ) -> None:
        first = dict(metrics[0]) if metrics else {}
        if PREEMPTION_KEY in first:  # a just-in-time checkpoint mid-epoch, not an epoch
            return  # (its manifest was written on the worker; the worker logs it)
        epoch = report_epoch(first, self.next_epoch)
        self.next_epoch = epoch + 1
        first.setdefault(EPOCH_KEY, epoch)
        if checkpoint is not None:
            meta = {EPOCH_KEY: epoch, "metrics": first, SPEC_HASH_KEY: self.spec_hash}
            try:
                stamp_persisted(checkpoint.filesystem, checkpoint.path, meta)
            except OSError as exc:
                # Unstamped, the checkpoint is skipped on resume (with why); the run goes on.
                log.warning("could not write the manifest of %s: %s", checkpoint.path, exc)
        if self.channel is not None:
            # `metrics` has one entry per worker: how many trained this epoch (elastic runs
            # change it), which the record keeps for usage (rayfleet.usage).
            event = {
                "type": "epoch",
                "epoch": epoch,
                "epochs": self.epochs,
                "metrics": first,
                "workers": len(metrics),
            }
            self.channel.push.remote({"rank": 0, **event})

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        """Say what failed and what happens next: Ray Train restarts the worker group (up to
        failure.maxFailures), which waits until the cluster has room for every worker again
        (a lost node: until one joins, or with scaling.minWorkers, with fewer workers)."""
        if self.channel is None or not worker_exceptions:
            return
        rank, error = min(worker_exceptions.items())
        what = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error)
        message = (
            f"{len(worker_exceptions)} worker(s) failed (rank {rank}: {what}); restarting the "
            "worker group from the newest verified checkpoint once there is room for it"
        )
        self.channel.push.remote({"rank": 0, "type": "log", "message": message})
