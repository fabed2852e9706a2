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
do), else its ordinal among the run's reports, counted on from the checkpoint the worker group
resumed from (`ReportEpochs`), after every restart and driver relaunch alike.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.train import Checkpoint
from ray.train.v2.api.callback import UserCallback

from rayfleet.storage.checkpoints import SPEC_HASH_KEY, newest_verified, stamp_persisted
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from rayfleet.train.preemption import PREEMPTION_KEY, continues_at

log = logging.getLogger(__name__)

EPOCH_KEY = "epoch"


def report_epoch(metrics: dict[str, Any], ordinal: int) -> int:
    """The epoch a report stands for: its integer `epoch` metric, else its ordinal."""
    value = epoch_metric(metrics)
    return ordinal if value is None else value


def epoch_metric(metrics: dict[str, Any]) -> int | None:
    """The report's own `epoch` metric, when it is a whole number >= 0."""
    value = metrics.get(EPOCH_KEY)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


class ReportEpochs:
    """The epoch each report of one run stands for, on Ray Train's controller.

    A report with an `epoch` metric says it. One without is numbered on from where its
    worker group started: the newest verified checkpoint at that moment, which is what
    rayfleet's resume handed the loop's `get_checkpoint()` (session._install_verified_
    checkpoint). That is looked up in storage at the first such report after the trainer
    starts and after every worker-group restart (`restarted`), so a group that resumed from
    an older checkpoint (the newest one torn by the failure) or a relaunched fit() counts
    from where its loop really is. The report's own checkpoint is not stamped yet when this
    runs, so it is not taken for the resume point. Shared by every callback of a trainer (one
    object in the pickled callbacks): `last` is the epoch of the latest report.
    """

    def __init__(self, run_uri: str) -> None:
        self.run_uri = run_uri
        self.next_epoch = 0
        self.last = 0
        self._recount = True

    def restarted(self) -> None:
        self._recount = True

    def of(self, metrics: dict[str, Any], *, advance: bool = True) -> int:
        """The report's epoch; `advance=False` for a just-in-time checkpoint's report,
        which stands for the epoch in progress, not a finished one."""
        epoch = epoch_metric(metrics)
        if epoch is None:
            if self._recount and advance:
                self.next_epoch, self._recount = self._resumed_at(), False
            epoch = self.next_epoch
        elif advance:
            self._recount = False
        if advance:
            self.next_epoch = epoch + 1
        self.last = epoch
        return epoch

    def _resumed_at(self) -> int:
        uri = parse_uri(self.run_uri)
        try:
            ref, _ = newest_verified(filesystem_for(uri), uri.fs_path)
        except OSError as exc:  # numbering is not worth failing a run over
            log.warning("could not look up the resume point of %s: %s", self.run_uri, exc)
            return self.next_epoch
        return continues_at(ref.epoch, ref.meta) if ref is not None else 0


class RunReporter(UserCallback):
    """Stamps manifests on persisted checkpoints and forwards rank 0's metrics.

    Built by the launcher and pickled to the controller; `channel` is the driver's
    ProgressChannel actor (in a sweep trial the sweep driver's, which only keeps the
    workers' busy time from it: the trial's metrics go to Tune); `numbering` numbers the
    reports (shared with the trainer's other callbacks).
    """

    def __init__(
        self, *, channel: Any, spec_hash: str, epochs: int | None, numbering: ReportEpochs
    ) -> None:
        self.channel = channel
        self.spec_hash = spec_hash
        self.epochs = epochs
        self.numbering = numbering

    def after_report(
        self,
        run_context: Any,
        metrics: list[dict[str, Any]],
        checkpoint: Checkpoint | None,
    ) -> None:
        first = dict(metrics[0]) if metrics else {}
        if PREEMPTION_KEY in first:  # a just-in-time checkpoint mid-epoch, not an epoch
            self.numbering.of(first, advance=False)
            return  # (its manifest was written on the worker; the worker logs it)
        epoch = self.numbering.of(first)
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
        self.numbering.restarted()
        if self.channel is None or not worker_exceptions:
            return
        rank, error = min(worker_exceptions.items())
        what = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error)
        message = (
            f"{len(worker_exceptions)} worker(s) failed (rank {rank}: {what}); restarting the "
            "worker group from the newest verified checkpoint once there is room for it"
        )
        self.channel.push.remote({"rank": 0, "type": "log", "message": message})
