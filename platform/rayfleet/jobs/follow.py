"""Stream a job's log until it ends, surviving dropped connections.

Ray's log tail is a websocket that replays the log from its first line, then follows it. A
laptop that sleeps, a `kubectl port-forward` that dies, a proxy that times out idle sockets:
each ends the stream while the job runs on. `follow` then waits, asks the Jobs API for the
job's status, and opens the tail again, skipping what it already printed, so the output
reads as one unbroken log. It gives up only when the cluster stays unreachable for
`give_up_s`, and says the job keeps running there.

Before the job starts there is no log at all: Ray holds a submission PENDING while the
cluster lacks the CPUs/GPUs its driver reserves (spec.driver), while it builds the
runtime_env, or while a queue in front of the cluster has not admitted it. `follow` says
that it is queued and Ray's reason, when the reason changes and every half minute, so a
waiting job never looks like a hung command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import tenacity

from rayfleet import record
from rayfleet.errors import ClusterUnreachableError, RayfleetError
from rayfleet.jobs.cluster import Cluster
from rayfleet.retry import RECONNECT, poll

TERMINAL = record.TERMINAL
PENDING = "PENDING"
_QUEUED_REPEAT_S = 30.0


def status_of(job) -> str:
    return str(getattr(job.status, "value", job.status))


class _Printed:
    """Characters of the log printed so far: survives a stream that dies mid-way."""

    def __init__(self):
        self.count = 0


async def _tail(cluster: Cluster, submission_id: str, printed: _Printed, write) -> None:
    """Print the tail, skipping the part of the replayed log that was printed already."""
    seen = 0
    async for chunk in cluster.client.tail_job_logs(submission_id):
        fresh = chunk[max(0, printed.count - seen) :]
        seen += len(chunk)
        if fresh:
            write(fresh)
            printed.count = seen


class _Lost(Exception):
    """The log stream ended while the job runs on; `error` says how."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _attach(cluster: Cluster, submission_id: str, printed: _Printed, write):
    """Stream the log until the stream ends: the job if it ended, else _Lost."""
    try:
        asyncio.run(_tail(cluster, submission_id, printed, write))
        job = cluster.info(submission_id)
    except ClusterUnreachableError as exc:
        raise _Lost(exc) from None
    except RayfleetError:
        raise
    except Exception as exc:  # noqa: BLE001 - aiohttp/websocket errors: the network
        raise _Lost(exc) from None
    if status_of(job) in TERMINAL:
        return job
    # The stream closed cleanly while the job runs on: a proxy hung up. Reattach.
    raise _Lost(ConnectionError("log stream closed"))


def _ride_out(
    cluster: Cluster,
    submission_id: str,
    printed: _Printed,
    write,
    note,
    lost: _Lost,
    give_up_s: float,
    sleep,
):
    """The stream was lost: back off (RECONNECT), ask the cluster for the job, and while it
    does not answer, try the stream again. Returns the job once the cluster answers (having
    printed what the dropped stream missed if the job ended meanwhile), or raises
    ClusterUnreachableError once the stream has been lost for `give_up_s`."""

    def reattaching(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception().error
        note(f"log stream lost ({type(error).__name__}: {str(error)[:100]}); reattaching")

    def gave_up(state: tenacity.RetryCallState):
        error = state.outcome.exception().error
        raise ClusterUnreachableError(
            f"{cluster.address}: lost the log stream of {submission_id} for "
            f"{give_up_s:.0f} s ({type(error).__name__}); the job keeps running there: "
            f"rayfleet jobs logs {submission_id} --follow"
        )

    def recover(first: bool):
        if first:
            raise lost  # the failure that started this outage: back off before anything
        try:
            job = cluster.info(submission_id)
        except ClusterUnreachableError:
            return _attach(cluster, submission_id, printed, write)
        if status_of(job) in TERMINAL:
            # The job ended while we were away: print what the dropped stream missed.
            if rest := cluster.logs(submission_id)[printed.count :]:
                write(rest)
        return job

    outage = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Lost),
        wait=RECONNECT,
        stop=tenacity.stop_after_delay(give_up_s),
        before_sleep=reattaching,
        retry_error_callback=gave_up,
        sleep=sleep,
    )
    for attempt in outage:
        with attempt:
            return recover(first=attempt.retry_state.attempt_number == 1)
    raise AssertionError("unreachable")


def wait_until_started(
    cluster: Cluster,
    submission_id: str,
    note: Callable[[str], None],
    *,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
):
    """Return the job's details once it is no longer PENDING; meanwhile `note` says it is
    queued and why (Ray's JobDetails.message), when that changes and every 30 s."""
    since = clock()
    said: dict[str, object] = {"message": None, "at": since}

    def started():
        job = cluster.info(submission_id)
        if status_of(job) != PENDING:
            return job
        message = " ".join((job.message or "waiting to start").split())
        now = clock()
        if message != said["message"] or now - float(said["at"]) >= _QUEUED_REPEAT_S:
            note(f"queued for {now - since:.0f} s: {message}")
            said.update(message=message, at=now)
        return None

    return poll(
        started, timeout=None, interval=interval, what="the job to start", sleep=sleep, clock=clock
    )


def follow(
    cluster: Cluster,
    submission_id: str,
    write: Callable[[str], None],
    note: Callable[[str], None],
    *,
    give_up_s: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
):
    """Stream the log of `submission_id` to `write` until the job ends; return its JobDetails.
    `note` gets one line per reattach, and says why while the job is queued."""
    printed = _Printed()
    try:
        wait_until_started(cluster, submission_id, note, sleep=sleep)
    except ClusterUnreachableError:
        pass  # the stream below rides out an unreachable cluster
    while True:  # one pass per lost stream; _ride_out owns the backoff and the give-up
        try:
            return _attach(cluster, submission_id, printed, write)
        except _Lost as lost:
            job = _ride_out(cluster, submission_id, printed, write, note, lost, give_up_s, sleep)
        if status_of(job) in TERMINAL:
            return job
