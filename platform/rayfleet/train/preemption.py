"""Preemption notices: a just-in-time verified checkpoint before a node is taken away.

When a cloud reclaims a spot node, Ray drains it with reason PREEMPTION and a deadline; Ray
Train (2.60) watches the drains of its workers' nodes and hands the notice to the training
function through `ray.train.get_preemption_info()`. Ray Train then keeps the group running
until the deadline and restarts it from the newest checkpoint: what was trained since that
checkpoint is lost unless the loop saves one in time. This module is that reaction.

`get_preemption_info()` is a barrier across the workers (rank 0's view is broadcast), so it
must be called by every rank at the same step, and it costs an actor round trip. A
`NoticeWatch` therefore asks at most every `check_every_s` seconds of training, counted in
steps that every rank agrees on (rank 0's wall time per step, broadcast at checks 1, 2,
4, 8, ...). Once a notice is known, rank 0 decides every step whether a checkpoint is due
(`checkpoint_due`): the first as late as the deadline allows, once one more step and the
save would no longer fit. From then on until the deadline has passed (the final window)
one is due after every step: whatever is trained after the last finished checkpoint is
lost, so saving after each step bounds the loss to about one step even when steps are much
shorter than the margin the deadline needs (the save estimate and SLACK_S). A save the node
takes away half-written costs nothing that training instead would have kept: it never
verifies, resume skips it, and the finished run prunes it. Training goes on until the node
goes; then Ray Train restarts the group and the loop resumes from the newest checkpoint, at
the step it was written.

Two entry points: rayfleet's recipes and `session` loops call
`session.checkpoint_if_preempted` (rayfleet checkpoint names, mid-epoch resume); a plain Ray
Train loop calls `checkpoint_if_preempted(save)` here, once per step on every rank:

    from rayfleet.train.preemption import checkpoint_if_preempted

    for step in range(start, total):
        ...  # one training step
        checkpoint_if_preempted(
            lambda folder: torch.save({"model": model.state_dict(), "step": step + 1},
                                      folder / "state.pt"),
            metrics={"step": step + 1},
        )

The checkpoint gets rayfleet's manifest before Ray Train uploads it, so it is verified even
if the controller never registers it (the node can go first), and `ray.train.get_checkpoint()`
hands it to the restarted loop.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayfleet.lazy import lazy
from rayfleet.storage.checkpoints import SPEC_HASH_KEY, write_manifest

session = lazy("rayfleet.train.session")  # imports this module: a cycle, broken at use

# The metric that marks a report as a just-in-time checkpoint (its value: the step), so the
# driver does not count it as a finished epoch.
PREEMPTION_KEY = "preemptionStep"
# The manifest meta key with where in the epoch a just-in-time checkpoint was written.
POSITION_KEY = "preemption"


def continues_at(epoch: int, meta: dict[str, Any]) -> int:
    """The epoch a loop resumed from a checkpoint of `epoch` (manifest meta `meta`) trains
    and reports next: the following one, or `epoch` itself for a just-in-time checkpoint
    written mid-epoch."""
    return epoch if int((meta.get(POSITION_KEY) or {}).get("step", 0)) else epoch + 1


DEFAULT_CHECK_EVERY_S = 2.0  # Ray Train itself polls the drains every 5 s; a check costs ~8 ms
DEFAULT_SAVE_ESTIMATE_S = 3.0  # until this worker group has timed a checkpoint of its own
SAVE_MARGIN = 1.5  # a save under a notice can be slower than the ones timed before
# Ray Train tears the group down the moment the deadline passes, and it registers a report
# only at its next poll: what a just-in-time checkpoint must leave room for, besides the save.
SLACK_S = 1.0
_FIRST_CHECK_STEP = 5  # rank 0 times this many steps before the cadence is set
# Ray Train's switch for its drain watcher; rayfleet's embedded single-node Ray turns it off
# (one local node is never drained), and with no watcher there is no notice to ask for.
WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def notices_possible() -> bool:
    """False when Ray Train's drain watcher is off: then `step()` costs no collective."""
    return os.environ.get(WATCHER_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


_STEP_WINDOW = 16


def steps_per_check(step_s: float | None, every_s: float) -> int:
    """How many steps make about `every_s` seconds of training (at least 1)."""
    if not step_s or step_s <= 0 or math.isnan(step_s):
        return 1
    return max(1, round(every_s / step_s))


def checkpoint_due(
    *,
    now_ms: float,
    deadline_ms: int | None,
    step_s: float,
    save_s: float,
    slack_s: float = SLACK_S,
) -> bool:
    """Whether to write the just-in-time checkpoint now rather than after one more step.

    Now, when one more step plus the save (plus slack for the slowest rank) would not fit
    before the deadline; at once when the notice has no deadline (Ray Train then waits its
    own default, which nothing here can see). Later is better: every step trained after the
    checkpoint is trained again after the resume.
    """
    if deadline_ms is None:
        return True
    left_s = (deadline_ms - now_ms) / 1000.0
    return left_s < step_s + save_s + slack_s


def window_over(
    *, now_ms: float, deadline_ms: int, step_s: float, slack_s: float = SLACK_S
) -> bool:
    """Whether a notice's final window has closed: its deadline passed some time ago (two
    steps, at least the slack) and this worker group still trains, so the node was not taken
    (a drain can be cancelled, or it spared this group); stop saving after every step."""
    return now_ms > deadline_ms + 1000.0 * max(slack_s, 2 * step_s)


@dataclass
class NoticeWatch:
    """Per worker group, on every rank: `step()` after each training step says whether a
    just-in-time checkpoint is due now, with the same answer on every rank.

    `get_info` and `broadcast` are Ray Train's `get_preemption_info` and
    `collective.broadcast_from_rank_zero` (both collectives); `rank` decides whose clock
    counts. While a notice is open, rank 0's verdict is broadcast every step: the first
    checkpoint as late as fits, then one after every step of the final window, until the
    window closes (`window_over`; at once after the one checkpoint of a notice without a
    deadline). A closed notice is not acted on again; a later one (another node, another
    deadline) is.
    """

    rank: int
    check_every_s: float = DEFAULT_CHECK_EVERY_S
    enabled: bool = field(default_factory=notices_possible)
    get_info: Callable[[], Any] | None = None
    broadcast: Callable[[Any], Any] | None = None
    clock: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], float] = lambda: time.time() * 1000.0
    steps: int = 0
    checks: int = 0
    every: int | None = None  # steps between checks, once calibrated
    notice: Any = None
    seen: int = 0  # notices acted on or being acted on
    latest: Any = None  # the last of them
    due_count: int = 0  # checkpoints due for the latest notice so far
    _next_check: int = _FIRST_CHECK_STEP
    _handled: set = field(default_factory=set)
    _last: float | None = None
    _first: float = 0.0
    _calibrated: tuple[float, int] | None = None
    _intervals: deque = field(default_factory=lambda: deque(maxlen=_STEP_WINDOW))
    _saves: deque = field(default_factory=lambda: deque(maxlen=3))

    def __post_init__(self) -> None:
        if self.enabled and (self.get_info is None or self.broadcast is None):
            import ray.train
            import ray.train.collective

            self.get_info = self.get_info or ray.train.get_preemption_info
            self.broadcast = self.broadcast or ray.train.collective.broadcast_from_rank_zero

    @property
    def step_s(self) -> float:
        """Rank 0's longest recent step: what one more step may take (an epoch boundary's
        evaluation and report included, when one is among them)."""
        return max(self._intervals) if self._intervals else 0.0

    @property
    def save_s(self) -> float:
        """What a checkpoint will take: the slowest of the group's last three, with margin."""
        return SAVE_MARGIN * max(self._saves) if self._saves else DEFAULT_SAVE_ESTIMATE_S

    def saved(self, seconds: float) -> None:
        """How long a checkpoint took this group (any report with one): the save estimate."""
        self._saves.append(seconds)

    def _calibrate(self, now: float) -> None:
        """Steps between checks from rank 0's wall time per step since the last calibration:
        evaluation and reports between epochs count too, so short epochs still get a check
        every `check_every_s` seconds. Broadcast: every rank must check at the same step.
        Done at exponentially spaced checks, so its cost vanishes as the run goes on."""
        since_s, since_step = self._calibrated or (self._first, 1)
        per_step = (now - since_s) / max(self.steps - since_step, 1)
        self.every = self.broadcast(steps_per_check(per_step, self.check_every_s))
        self._calibrated = (now, self.steps)

    def step(self) -> bool:
        if not self.enabled:
            return False
        now = self.clock()
        if self._last is not None:
            self._intervals.append(now - self._last)
        else:
            self._first = now
        self._last = now
        self.steps += 1
        if self.notice is None:
            if self.steps < self._next_check:
                return False
            if self.checks & (self.checks - 1) == 0:  # checks 0, 1, 2, 4, 8, ...: recalibrate
                self._calibrate(now)
            self._next_check = self.steps + self.every
            self.checks += 1
            info = self.get_info()
            if info is None or _key(info) in self._handled:
                return False
            self.notice, self.latest, self.seen = info, info, self.seen + 1
            self.due_count = 0
        verdict = self.broadcast(self._verdict() if self.rank == 0 else None)
        if verdict in (_LAST, _CLOSED):
            self._handled.add(_key(self.notice))
            self.notice = None
            self._next_check = self.steps + (self.every or 1)
        due = verdict in (_SAVE, _LAST)
        self.due_count += due
        return due

    def _verdict(self) -> str:
        """Rank 0's decision for this step of an open notice."""
        deadline_ms, now_ms = self.notice.deadline_ms, self.wall_ms()
        if deadline_ms is None:
            return _LAST
        if window_over(now_ms=now_ms, deadline_ms=deadline_ms, step_s=self.step_s):
            return _CLOSED
        due = checkpoint_due(
            now_ms=now_ms, deadline_ms=deadline_ms, step_s=self.step_s, save_s=self.save_s
        )
        return _SAVE if due else _WAIT


# Rank 0's verdicts on an open notice: checkpoint now and keep the notice open; checkpoint
# now and close it; not yet; close it without a checkpoint.
_SAVE, _LAST, _WAIT, _CLOSED = "save", "last", "wait", "closed"


def _key(info: Any) -> tuple:
    return (info.deadline_ms, tuple(info.preempted_node_ids))


def describe(info: Any, now_ms: float | None = None) -> str:
    """One line about a notice, for the user."""
    nodes = ", ".join(n[:8] for n in info.preempted_node_ids)
    if info.deadline_ms is None:
        when = "no deadline given"
    else:
        left = (info.deadline_ms - (now_ms if now_ms is not None else time.time() * 1000)) / 1000
        when = f"{left:.0f} s before its deadline"
    return f"preemption notice for node {nodes} (ranks {info.preempted_ranks}), {when}"


# ------------------------------------------------------------------ plain Ray Train loops

_WATCH: NoticeWatch | None = None


def _watch() -> NoticeWatch:
    """This worker group's watch (module state: one training function per worker process)."""
    global _WATCH
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    if _WATCH is None or _WATCH.rank != rank:
        _WATCH = NoticeWatch(rank=rank)
    return _WATCH


def save_and_report(
    save: Callable[[Path], Any],
    *,
    rank: int,
    metrics: dict[str, Any],
    step: int,
    meta: dict[str, Any],
    checkpoint_dir_name: str | None,
) -> float:
    """Rank 0 saves into a fresh folder with its manifest; every rank reports (a barrier).
    Returns the seconds it took."""
    import ray.train

    started = time.monotonic()
    metrics = {**metrics, PREEMPTION_KEY: step}
    with tempfile.TemporaryDirectory(prefix="rayfleet-jit-") as folder:
        checkpoint = None
        if rank == 0:
            save(Path(folder))
            write_manifest(folder, {**meta, "metrics": metrics})
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=checkpoint_dir_name if checkpoint is not None else None,
        )
    return time.monotonic() - started


def checkpoint_if_preempted(
    save: Callable[[Path], Any],
    metrics: dict[str, Any] | None = None,
    *,
    epoch: int | None = None,
    check_every_s: float = DEFAULT_CHECK_EVERY_S,
) -> bool:
    """Call once per training step on every rank of a plain Ray Train loop; True when it
    wrote a just-in-time checkpoint because a node of the run is about to be preempted.

    On rank 0 `save(folder)` writes the loop's state (whatever it needs to resume at the
    next step) into `folder`; rayfleet adds its manifest and the folder is reported with
    `metrics` through `ray.train.report` on every rank. Checks cost one collective every
    `check_every_s` seconds of training and nothing else. Ray's default checkpoint names are
    kept (the style of a plain loop's other checkpoints), so the newest is this one.
    """
    watch = _watch()
    watch.check_every_s = check_every_s
    if not watch.step():
        return False
    meta: dict[str, Any] = {POSITION_KEY: {"step": watch.steps}}
    if epoch is not None:
        meta["epoch"] = epoch
    if session._CTX is not None:  # run by rayfleet: resume checks the spec it was written for
        meta[SPEC_HASH_KEY] = session._CTX.spec_hash
    watch.saved(
        save_and_report(
            save,
            rank=watch.rank,
            metrics=dict(metrics or {}),
            step=watch.steps,
            meta=meta,
            checkpoint_dir_name=None,
        )
    )
    return True
