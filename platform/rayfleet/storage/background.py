"""Storage writes that must not hold up the loop that asks for them, applied in order.

Why: a sweep's driver updates each trial's record.json from Ray Tune's callbacks, and Tune runs
every trial's scheduling from that one thread. A record update is a read and a write of an
object in storage (0.5-1.9 s per result on the loopback S3 server with six trials reporting),
so done inline it slowed every trial's scheduling and Tune warned that the callback was the
bottleneck. Here the callback only queues the change; one thread applies the changes in the
order they were queued (a record's epochs land in order), and `close` waits for the queue to
drain, so nothing queued is lost when the driver ends normally.

A change that fails is logged and dropped: bookkeeping never fails the work it describes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_STOP = object()


class BackgroundWriter:
    """One daemon thread applying queued storage changes in order."""

    def __init__(self, name: str):
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def submit(self, what: str, change: Callable[[], object]) -> None:
        """Queue `change` (called with no arguments on the writer's thread); `what` names it
        in the warning if it fails."""
        if self._closed:
            raise RuntimeError(f"{self._thread.name} is closed; cannot queue {what}")
        self._queue.put((what, change))

    def close(self, timeout_s: float = 60.0) -> bool:
        """Apply everything queued, then stop. False (and a warning) if that took longer than
        `timeout_s`: the thread is a daemon, so the process can still exit."""
        if self._closed:
            return True
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning(
                "%s: %d storage updates still pending after %.0f s; they may be lost",
                self._thread.name,
                self._queue.qsize(),
                timeout_s,
            )
            return False
        return True

    def _loop(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            what, change = item
            try:
                change()
            except Exception as exc:  # noqa: BLE001 - logged; the work it describes goes on
                log.warning("%s: %s", what, exc)
