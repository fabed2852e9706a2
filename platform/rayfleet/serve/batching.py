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

The batcher does not look inside what it groups; `concat_rows` and `split_rows` are how a
forward over several requests of a multi-input model joins each input along N and gives
every request its own rows of each output back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

LOAD_MEMORY_S = 1.0  # a batch > 1 finished this recently means requests are arriving together

# forward(one item per request) -> one result per request, in order. Items are whatever the
# caller submits (arrays, or dicts of named arrays); the batcher only groups them.
Forward = Callable[[list[Any]], list[Any]]
Tensors = dict[str, np.ndarray]


def concat_rows(items: list[Tensors]) -> tuple[Tensors, list[int]]:
    """Several requests' inputs as one batch: each named input concatenated along N (the
    first axis), in request order; and each request's row count, for `split_rows`. Every
    item must have the same names (a request's optional inputs are filled in before)."""
    names = list(items[0])
    if any(list(item) != names for item in items[1:]):
        raise ValueError(f"requests in one batch must have the same inputs {names}")
    sizes = [len(next(iter(item.values()))) for item in items]
    if len(items) == 1:
        return dict(items[0]), sizes
    return {name: np.concatenate([item[name] for item in items]) for name in names}, sizes


def split_rows(results: Tensors, sizes: list[int]) -> list[Tensors]:
    """A batch's outputs back per request: request i gets its `sizes[i]` rows of each."""
    bounds = np.cumsum(sizes)[:-1]
    parts = {name: np.split(array, bounds) for name, array in results.items()}
    return [{name: parts[name][i] for name in results} for i in range(len(sizes))]


class AdaptiveBatcher:
    """Groups concurrent `submit` calls into `forward(list of items) -> list of results`."""

    def __init__(self, forward: Forward, *, max_batch_size: int, wait_s: float):
        self._forward = forward
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        self._full: asyncio.Event | None = None
        self._last_size = 0
        self._last_end = 0.0
        # One thread: one forward at a time on the model (as a device would take them).
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rayfleet-forward")

    async def submit(self, x: Any) -> Any:
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
