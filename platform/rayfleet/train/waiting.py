"""How long a run waits for room for its workers after losing a node, and what it says.

Ray Train restarts a worker group after a node is lost and waits for the cluster to place
every worker again. What bounds that wait is not `FailureConfig.max_failures` but two
controller settings: each start attempt times out after `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`
(60 s by default; read from the driver's environment and passed on to the controller), and
the timed-out attempts count against `FailureConfig.controller_failure_limit` (default -1:
forever). So a fixed-size run on a cluster that never gets a replacement node waits forever.

rayfleet turns `failure.replacementWaitSeconds` into those two numbers (`wait_bound`), prints
one line when the run starts waiting (`waiting_callback`, on the controller) and one clear
failure line when the bound passes (`gave_up_line`), instead of relaunching the run.
The bound counts all waiting of one launch together (Ray Train's failure counters are per
fit(), not per node loss).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# Longest single start attempt rayfleet asks for: a shorter one notices a new node sooner
# and puts the waiting line on screen sooner; the number of attempts makes up the bound.
MAX_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WaitBound:
    """`attempts` start attempts of `start_timeout_s` each: `wait_s` in all."""

    wait_s: float
    start_timeout_s: float
    attempts: int

    @property
    def controller_failure_limit(self) -> int:
        """Ray Train's limit: the timed-out attempts it retries (the first is not a retry)."""
        return self.attempts - 1


def wait_bound(wait_s: float, env: dict[str, str] | None = None) -> WaitBound:
    """The start timeout and attempts that make `wait_s`; a start timeout already set in
    the environment (by the user or the cluster) is kept and only the attempts adapt."""
    env = os.environ if env is None else env
    raw = env.get(START_TIMEOUT_ENV, "")
    try:
        timeout = float(raw) if raw else min(wait_s, MAX_START_TIMEOUT_S)
    except ValueError:
        timeout = min(wait_s, MAX_START_TIMEOUT_S)
    timeout = max(timeout, 1.0)
    attempts = max(1, math.ceil(wait_s / timeout - 1e-9))
    return WaitBound(wait_s=float(wait_s), start_timeout_s=timeout, attempts=attempts)


def apply(bound: WaitBound) -> None:
    """Put the start timeout where Ray Train reads it: the driver's environment, which
    fit() passes on to its controller (Ray Train propagates this variable when it is set)."""
    os.environ.setdefault(START_TIMEOUT_ENV, f"{bound.start_timeout_s:g}")


def waiting_line(num_workers: int, bound: WaitBound) -> str:
    return (
        f"no room for {num_workers} worker(s) for {bound.start_timeout_s:.0f} s (a node lost?); "
        f"waiting up to {bound.wait_s:.0f} s in all for room, e.g. a replacement node "
        "(failure.replacementWaitSeconds)"
    )


def waited_too_long(exc: BaseException) -> bool:
    """Whether `exc` (from fit()) is Ray Train giving up waiting for room for the workers."""
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return isinstance(exc, ControllerError) and isinstance(
        exc.controller_failure, WorkerGroupStartupTimeoutError
    )


def gave_up_line(num_workers: int, wait_s: float) -> str:
    """The one failure line when the wait bound has passed: what, which knob, what to do."""
    return (
        f"no room for {num_workers} worker(s) after waiting {wait_s:.0f} s "
        "(failure.replacementWaitSeconds); add a node with the resources of the one lost, "
        "raise failure.replacementWaitSeconds, or set scaling.minWorkers to go on with fewer"
    )


def waiting_callback(channel: Any, num_workers: int, bound: WaitBound):
    """A Ray Train controller callback that sends `waiting_line` to the driver's progress
    channel once per wait: when the first start attempt times out (after a group ran, or
    from the start). Ray Train 2.60 has no public hook for this; ControllerCallback is its
    developer API for exactly such callbacks in RunConfig.callbacks."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2._internal.execution.callback import ControllerCallback
    from ray.train.v2._internal.execution.controller.state import RunningState

    class WaitingForRoom(ControllerCallback):
        def __init__(self) -> None:
            self.said = False

        def after_controller_state_update(self, previous_state, current_state) -> None:
            if isinstance(current_state, RunningState):
                self.said = False
                return
            error = getattr(current_state, "training_failed_error", None)
            cause = getattr(error, "controller_failure", None)
            if self.said or not isinstance(cause, WorkerGroupStartupTimeoutError):
                return
            self.said = True
            message = waiting_line(num_workers, bound)
            if channel is not None:  # a sweep's drops it: Ray Train's own log says it
                channel.push.remote({"rank": 0, "type": "log", "message": message})

    return WaitingForRoom()
