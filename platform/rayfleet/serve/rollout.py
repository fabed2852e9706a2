"""The record of a model rollout on a running Serve instance, and what `serve status` shows of it.

Serve does the rolling itself (see `config.ROLLOUT_SURGE_PERCENT`), but it reports replicas
without their version: its details list replica ids and states, not which checkpoint each one
loaded. So `rayfleet serve` notes, before it applies a new checkpoint, which replicas run the
old one (`Rollout.old_replicas`); every other replica of the deployment was started by the
rollout and runs the new one (Serve starts only the target version's replicas after a config
change). The record lives in the Ray cluster's key-value store (see `runtime`), so `rayfleet
serve status` in another terminal, or against the same cluster, shows the same rollout.

Pure: pydantic and plain data only (no Ray).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

# Replica states (ray.serve ReplicaState) that hold or will hold a process serving a version.
LIVE_STATES = ("STARTING", "UPDATING", "RECOVERING", "RUNNING", "PENDING_MIGRATION", "STOPPING")


def version_of(checkpoint: str | None) -> str | None:
    """The model version a checkpoint URI serves as (its folder name, the responses'
    `model_version`); the same rule as `loading.LoadedModel.version`."""
    return checkpoint.rstrip("/").rsplit("/", 1)[-1] if checkpoint else None


class Rollout(BaseModel):
    """One application's move from one checkpoint to another."""

    model_config = ConfigDict(extra="forbid")

    application: str
    from_checkpoint: str
    to_checkpoint: str
    old_replicas: list[str]
    started_s: float
    state: Literal["rolling", "done", "rolled back"] = "rolling"
    message: str = ""

    def counts(self, replicas: list[dict]) -> dict[str, dict[str, int]]:
        """Replica states per side, from Serve's replica details (`replica_id`, `state`):
        {"old": {"RUNNING": 2}, "new": {"STARTING": 2}}."""
        out: dict[str, dict[str, int]] = {"old": {}, "new": {}}
        old = set(self.old_replicas)
        for replica in replicas:
            state = str(replica.get("state", "?"))
            if state not in LIVE_STATES:
                continue
            side = out["old" if replica.get("replica_id") in old else "new"]
            side[state] = side.get(state, 0) + 1
        return out

    def summary(self, replicas: list[dict]) -> str:
        """One line: `rolling A -> B: old 2 running; new 1 running, 1 starting`."""
        counts = self.counts(replicas)

        def side(states: dict[str, int]) -> str:
            parts = [f"{n} {s.lower()}" for s, n in sorted(states.items()) if n]
            return ", ".join(parts) or "none"

        old, new = version_of(self.from_checkpoint), version_of(self.to_checkpoint)
        head = f"{self.state} {old} -> {new}"
        line = f"{head}: old {side(counts['old'])}; new {side(counts['new'])}"
        return f"{line} ({self.message})" if self.message else line
