"""Adaptive batching (rayfleet.serve.batching) on a real event loop, without Ray or a model.

The forward here sleeps like a model that takes a few milliseconds and tags each output with
its input, so every test checks that rows come back to the request that sent them.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rayfleet.serve.batching import AdaptiveBatcher

pytestmark = pytest.mark.unit
FORWARD_S = 0.02


class Model:
    def __init__(self, fail_on: float | None = None):
        self.batches: list[int] = []
        self.fail_on = fail_on

    def forward(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(arrays))
        time.sleep(FORWARD_S)
        if self.fail_on is not None and any((a == self.fail_on).any() for a in arrays):
            raise RuntimeError("model failed")
        return [a * 2 for a in arrays]


def test_a_lone_request_never_waits_for_a_batch():
    model = Model()
    batcher = AdaptiveBatcher(model.forward, max_batch_size=32, wait_s=0.5)

    async def go():
        took = []
        for i in range(5):  # one client, back to back
            started = time.perf_counter()
            out = await batcher.submit(np.full((1, 2), float(i)))
            took.append(time.perf_counter() - started)
            assert (out == 2 * i).all()
        return took

    took = asyncio.run(go())
    assert model.batches == [1] * 5
    assert max(took) < FORWARD_S + 0.1  # far below the 0.5 s batch wait


def test_concurrent_requests_share_forwards_and_get_their_own_rows():
    model = Model()
    batcher = AdaptiveBatcher(model.forward, max_batch_size=8, wait_s=0.05)

    async def go():
        return await asyncio.gather(*(batcher.submit(np.full((1, 2), i)) for i in range(20)))

    outs = asyncio.run(go())
    for i, out in enumerate(outs):
        assert (out == 2 * i).all()
    assert sum(model.batches) == 20 and max(model.batches) == 8
    assert len(model.batches) <= 4  # 1 dispatched at once, then full batches


def test_under_load_the_next_batch_waits_to_fill_and_stops_at_max():
    """Closed-loop clients: after a batch > 1, the first returning request waits for the
    others instead of going alone (which would split them into two half batches)."""
    model = Model()
    batcher = AdaptiveBatcher(model.forward, max_batch_size=16, wait_s=0.2)

    async def client(i: int):
        for _ in range(4):
            await batcher.submit(np.full((1, 2), i))
            await asyncio.sleep(0.001 * (i % 4))  # clients come back at slightly different times

    async def go():
        await asyncio.gather(*(client(i) for i in range(16)))

    asyncio.run(go())
    assert sum(model.batches) == 64
    assert model.batches.count(16) >= 3, model.batches


def test_a_failing_forward_fails_only_its_batch():
    model = Model(fail_on=7.0)
    batcher = AdaptiveBatcher(model.forward, max_batch_size=4, wait_s=0.0)

    async def go():
        results = await asyncio.gather(
            *(batcher.submit(np.full((1, 2), float(i))) for i in range(8)), return_exceptions=True
        )
        after = await batcher.submit(np.full((1, 2), 1.0))
        return results, after

    results, after = asyncio.run(go())
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert 7 in failed and 0 not in failed  # 0 went alone, before the bad batch
    assert all((results[i] == 2 * i).all() for i in range(8) if i not in failed)
    assert (after == 2).all()  # the batcher keeps serving
