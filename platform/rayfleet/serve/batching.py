"""Adaptive dynamic batching: a lone request never waits; under load, requests share forwards.

Why not `@serve.batch`: it waits up to `batch_wait_timeout_s` for every batch to fill, so a
request that arrives alone pays the whole timeout (5 ms with the shipped serve.yaml, +22 ms
p50 measured through Serve's proxy on 2 cores). Here:

- an idle replica dispatches a request at once (a batch of one);
- the forward runs on one worker thread, so the event loop keeps reading and validating the
  requests that arrive meanwhile; when the forward ends, everything queued (up to
  `max_batch_size`) goes as the next batch: the batch size follows the load by itself
  ("continuous batching");
- only while a load is evident (the previous batch, finished within `LOAD_MEMORY_S`, held
  more than one request) does the next batch wait, at most `wait_s`, for more requests to
  join: closed-loop clients send their next requests right after a batch is answered, and
  without the wait the first of them would go alone and split the clients into two half
  batches. The wait ends early when the batch is full.

Trade-off: the first request after a burst may wait up to `wait_s` once; a request that
arrives during a forward waits for that forward to finish (as with any batcher on one
device). The thread hand-off costs a lone request tens of microseconds (README "Serving").
Requests are validated before they join a batch, so a bad request never fails the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

LOAD_MEMORY_S = 1.0  # a batch > 1 finished this recently means requests are arriving together

Forward = Callable[[list[np.ndarray]], list[np.ndarray]]


class AdaptiveBatcher:
    """Groups concurrent `submit` calls into `forward(list of arrays) -> list of arrays`."""

    def __init__(self, forward: Forward, *, max_batch_size: int, wait_s: float):
        self._forward = forward
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._queue: list[tuple[np.ndarray, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        self._full: asyncio.Event | None = None
        self._last_size = 0
        self._last_end = 0.0
        # One thread: one forward at a time on the model (as a device would take them).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rayfleet-forward")

    async def submit(self, x: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((x, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        elif self._full is not None and len(self._queue) >= self.max_batch_size:
            self._full.set()
        return await future

    def _under_load(self) -> bool:
        recent = time.monotonic() - self._last_end < LOAD_MEMORY_S
        return self.wait_s > 0 and self._last_size > 1 and recent

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if len(self._queue) < self.max_batch_size and self._under_load():
                    self._full = asyncio.Event()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self.wait_s)
                    self._full = None
                batch = self._queue[: self.max_batch_size]
                del self._queue[: self.max_batch_size]
                batch = [(x, f) for x, f in batch if not f.done()]  # cancelled: client gone
                if not batch:
                    continue
                try:
                    outs = await loop.run_in_executor(
                        self._executor, self._forward, [x for x, _ in batch]
                    )
                except Exception as exc:  # the model failed: every request in it gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), out in zip(batch, outs, strict=True):
                        if not future.done():
                            future.set_result(out)
                self._last_size, self._last_end = len(batch), time.monotonic()
        finally:
            self._drainer = None
