"""Retries and polling: one library (tenacity), one poll helper, named backoff shapes.

Two different waits live here, and every loop in rayfleet is one of them:

- a **retry** repeats an action that failed (a conflicting write, a store or head that is
  not up yet, a dropped connection) with backoff, a bounded number of times or for a bounded
  time, and re-raises the last failure when it gives up. That is tenacity: `retrying` builds
  a `tenacity.Retrying` with the defaults rayfleet wants; the backoff shapes below are
  tenacity wait strategies, named for what they are used for.
- a **poll** asks a question until the answer is ready (a job that ended, a deployment
  that runs, a dashboard that answers) at a fixed interval, up to a timeout: `poll`. The
  question raising an exception ends the poll with that exception.

Both take `sleep=` (and `poll` a `clock=`) so tests run them on a fake clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity
from tenacity.wait import wait_base

from rayfleet.errors import WorkFailedError

T = TypeVar("T")
Sleep = Callable[[float], None]

__all__ = [
    "AGENT_START",
    "CONFLICT",
    "RECONNECT",
    "TimedOutError",
    "doubling",
    "jittered",
    "poll",
    "retrying",
]


class TimedOutError(WorkFailedError):
    """A poll ran out of time: names what was awaited and for how long."""


# ------------------------------------------------------------------------ backoff shapes


def doubling(first: float, cap: float) -> wait_base:
    """Exponential backoff: `first`, 2x, 4x, ... seconds, never more than `cap`."""
    return tenacity.wait_exponential(multiplier=first, max=cap)


class jittered(wait_base):  # noqa: N801 - named like tenacity's own wait strategies
    """Another wait, scaled by a random factor in [0.5, 1): many clients that failed
    together do not come back together."""

    def __init__(self, wait: Callable[[tenacity.RetryCallState], float]):
        self.wait = wait

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.wait(retry_state) * (0.5 + random.random() / 2)


RECONNECT = doubling(1.0, 10.0)
"""Something remote that went away and comes back (a dropped log stream, a store that stopped
answering): 1, 2, 4, 8, then every 10 s."""

CONFLICT = doubling(0.05, 1.0)
"""Compare-and-swap writers that collided: 0.05, 0.1, 0.2 ... up to 1 s."""

AGENT_START = tenacity.wait_fixed(2.0)
"""A Ray head's job agent that is still starting: every 2 s."""


# ------------------------------------------------------------------------------- retries


def retrying(
    *,
    on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool],
    wait: Callable[[tenacity.RetryCallState], float],
    attempts: int | None = None,
    within_s: float | None = None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    sleep: Sleep = time.sleep,
) -> tenacity.Retrying:
    """A tenacity `Retrying` that retries exceptions matching `on` (exception types, or a
    predicate on the exception), waiting `wait` between attempts, for at most `attempts`
    attempts and/or until `within_s` seconds have passed since the first one; then it
    re-raises the last exception as it was. Anything else `on` rejects propagates at once.

    Call it with the action: `retrying(on=Conflict, wait=CONFLICT, attempts=5)(fn, *args)`.
    """
    predicate = (
        tenacity.retry_if_exception(on)
        if callable(on) and not isinstance(on, type)
        else tenacity.retry_if_exception_type(on)
    )
    stop: tenacity.stop.stop_base = tenacity.stop_never
    if attempts is not None:
        stop = tenacity.stop_after_attempt(attempts)
    if within_s is not None:
        stop = stop | tenacity.stop_after_delay(within_s)
    return tenacity.Retrying(
        retry=predicate,
        wait=wait,
        stop=stop,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


# ---------------------------------------------------------------------------------- poll


def poll(
    check: Callable[[], T | None],
    *,
    timeout: float | None,
    interval: float,
    what: str,
    on_timeout: Callable[[], BaseException] | None = None,
    sleep: Sleep = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call `check` every `interval` seconds until it returns something other than None, and
    return that. `check` runs at once, and a last time at the deadline (the last wait is
    shortened to end there); an exception from it ends the poll.

    After `timeout` seconds (None: never) raise `on_timeout()` when given, else
    TimedOutError naming `what` ("deployment digits to run") and the timeout.
    """
    deadline = None if timeout is None else clock() + max(0.0, timeout)

    def expired(_state: tenacity.RetryCallState) -> bool:
        return deadline is not None and clock() >= deadline

    def wait(_state: tenacity.RetryCallState) -> float:
        if deadline is None:
            return interval
        return max(0.0, min(interval, deadline - clock()))

    def give_up(_state: tenacity.RetryCallState) -> T:
        if on_timeout is not None:
            raise on_timeout()
        raise TimedOutError(f"timed out after {timeout:g} s waiting for {what}")

    retrying_ = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda value: value is None),
        wait=wait,
        stop=expired,
        sleep=sleep,
        retry_error_callback=give_up,
    )
    return retrying_(check)
