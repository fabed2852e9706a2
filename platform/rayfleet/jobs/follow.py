"""Stream a job's log until it ends, surviving dropped connections.

Ray's log tail is a websocket that replays the log from its first line, then follows it. A
laptop that sleeps, a `kubectl port-forward` that dies, a proxy that times out idle sockets:
each ends the stream while the job runs on. `follow` then waits, asks the Jobs API for the
job's status, and opens the tail again, skipping what it already printed, so the output
reads as one unbroken log. It gives up only when the cluster stays unreachable for
`give_up_s`, and says the job keeps running there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from rayfleet.errors import ClusterUnreachableError, RayfleetError
from rayfleet.jobs.cluster import Cluster
from rayfleet.train import record

TERMINAL = record.TERMINAL


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


def follow(
    cluster: Cluster,
    submission_id: str,
    write: Callable[[str], None],
    note: Callable[[str], None],
    *,
    give_up_s: float = 120.0,
):
    """Stream the log of `submission_id` to `write` until the job ends; return its JobDetails.
    `note` gets one line per reattach."""
    printed = _Printed()
    lost_since: float | None = None
    delay = 1.0
    while True:
        try:
            asyncio.run(_tail(cluster, submission_id, printed, write))
            job = cluster.info(submission_id)
            if status_of(job) in TERMINAL:
                return job
            # The stream closed cleanly while the job runs on: a proxy hung up. Reattach.
            error: Exception = ConnectionError("log stream closed")
        except ClusterUnreachableError as exc:
            error = exc
        except RayfleetError:
            raise
        except Exception as exc:  # noqa: BLE001 - aiohttp/websocket errors: the network
            error = exc
        now = time.monotonic()
        lost_since = lost_since or now
        if now - lost_since > give_up_s:
            raise ClusterUnreachableError(
                f"{cluster.address}: lost the log stream of {submission_id} for "
                f"{give_up_s:.0f} s ({type(error).__name__}); the job keeps running there: "
                f"rayfleet jobs logs {submission_id} --follow"
            )
        note(f"log stream lost ({type(error).__name__}: {str(error)[:100]}); reattaching")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
        try:
            job = cluster.info(submission_id)
        except ClusterUnreachableError:
            continue
        lost_since, delay = None, 1.0
        if status_of(job) in TERMINAL:
            # The job ended while we were away: print what the dropped stream missed.
            if rest := cluster.logs(submission_id)[printed.count :]:
                write(rest)
            return job
