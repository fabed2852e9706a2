"""A bounded client loop for serving tests: `threads` clients sending one OIP infer request
after another through rayfleet's PredictClient, until stopped or `max_s` runs out."""

from __future__ import annotations

import threading
import time
from typing import Any

from rayfleet.errors import RayfleetError
from rayfleet.serve.client import PredictClient


class BoundedLoad:
    def __init__(
        self,
        url: str,
        model: str,
        body: dict[str, Any],
        *,
        retries: int,
        threads: int = 2,
        max_s: float = 30.0,
    ):
        self.client = PredictClient(
            url, retries=retries, backoff_s=0.05, max_backoff_s=1.0, timeout_s=10
        )
        self.model, self.body = model, body
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_s
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                self.client.infer(self.model, self.body)
                outcome = None
            except RayfleetError as exc:
                outcome = str(exc)
            with self._lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.errors.append(outcome)

    def __enter__(self) -> BoundedLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(40)
        self.client.close()

    @property
    def total(self) -> int:
        return self.ok + self.failed
