"""The launcher's events as the in-process training tests see them, and the one fault they
all inject: SIGKILL to rank 1 after a given epoch, then the run resumes on its own."""

from __future__ import annotations

import os
import signal

from rayfleet.train.launcher import run_train_job


class Events:
    """Collects launcher events; `hook` runs test actions on them (fault injection)."""

    def __init__(self, hook=None):
        self.items, self.hook = [], hook
        self.pids: dict[int, int] = {}

    def __call__(self, event):
        self.items.append(event)
        if event["type"] == "worker":
            self.pids[event["rank"]] = event["pid"]
        if self.hook:
            self.hook(self, event)

    def logs(self):
        return [e["message"] for e in self.items if e["type"] == "log"]

    def epochs(self):
        return {e["epoch"]: e["metrics"] for e in self.items if e["type"] == "epoch"}


def run_killing_rank1(job, *, after_epoch: int):
    """Run `job`, killing rank 1's worker process once epoch `after_epoch` (0-based) is
    reported; the run's result once it resumed and finished. Asserts the kill happened and
    the run said it resumed from a checkpoint."""

    def kill(events: Events, event) -> None:
        if event["type"] == "epoch" and event["epoch"] == after_epoch and not events.killed:
            events.killed = 1
            os.kill(events.pids[1], signal.SIGKILL)

    events = Events(kill)
    events.killed = 0
    result = run_train_job(job, on_event=events)
    assert events.killed == 1
    assert any(m.startswith("resuming from checkpoint_e00000") for m in events.logs()), (
        events.logs()
    )
    return result
