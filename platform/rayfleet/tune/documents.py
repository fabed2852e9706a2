"""The sweep documents rayfleet stores: `trials.json` (the trial table) and `best.json`.

They are the sweep's state: `sweep results` and serving read them, and `sweep --resume`
continues a sweep from `trials.json` and the trials' verified checkpoints alone (Tune's
pickled experiment is never read back; see `rayfleet.tune.replay`). Anyone who can write
to the storage can write these files, so they are read strictly: unknown keys, wrong types
and unknown trial states are refused with one line, never half-understood.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayfleet.errors import StorageError

TRIALS_FILE = "trials.json"
BEST_FILE = "best.json"

TrialState = Literal["PENDING", "RUNNING", "PAUSED", "DONE", "STOPPED", "ERROR"]
# A finished trial is never run again: DONE ran every epoch, STOPPED was ended by the scheduler.
FINISHED: frozenset[str] = frozenset({"DONE", "STOPPED"})


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TrialRow(_Document):
    """One trial: its id (also its folder, `<sweep>/<trial_id>/train`), sampled values, state."""

    trial_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    params: dict[str, Any]
    state: TrialState
    epochs_done: int = Field(default=0, ge=0)
    value: float | None = None  # the sweep metric, last reported
    error: str | None = None


class SweepTable(_Document):
    """The trial table of a sweep, across every launch (`--resume` adds one)."""

    sweep: str
    metric: str
    mode: Literal["max", "min"]
    epochs: int = Field(ge=1)  # epochs a trial runs when nothing stops it
    trials: list[TrialRow] = Field(default_factory=list)
    launches: int = Field(default=1, ge=1)  # Tune experiments run for this sweep so far

    @property
    def epochs_consumed(self) -> int:
        return sum(t.epochs_done for t in self.trials)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out


class TrialsFile(SweepTable):
    """`trials.json` as stored: the table and when it was last written."""

    updated: float


class BestTrial(_Document):
    """`best.json`: the best trial and its newest verified checkpoint (what serving loads)."""

    sweep: str
    metric: str
    mode: Literal["max", "min"]
    value: float
    trial_id: str
    params: dict[str, Any]
    epoch: int = Field(ge=0)
    checkpoint: str = Field(min_length=1)


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "document"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse_table(data: bytes, where: str) -> SweepTable:
    """A stored trials.json, strictly; StorageError (exit 2) in one line when it is not one."""
    try:
        doc = TrialsFile.model_validate_json(data)
    except ValidationError as exc:
        raise StorageError(
            f"{TRIALS_FILE} at {where} is not a valid sweep table: {_one_line(exc)}; restore "
            "it or run the sweep under a new metadata.name"
        ) from None
    return SweepTable.model_validate(doc.model_dump(exclude={"updated"}))


def dump_table(table: SweepTable, updated: float) -> bytes:
    doc = TrialsFile(**table.model_dump(), updated=updated)
    return doc.model_dump_json(indent=2).encode()


def parse_best(data: bytes, where: str) -> BestTrial:
    try:
        return BestTrial.model_validate_json(data)
    except ValidationError as exc:
        raise StorageError(
            f"{BEST_FILE} at {where} is not a valid best-trial record: {_one_line(exc)}; "
            "rerun the sweep with --resume to write it again"
        ) from None


def dump_best(best: BestTrial) -> bytes:
    return best.model_dump_json(indent=2).encode()
