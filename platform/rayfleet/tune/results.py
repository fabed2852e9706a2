"""A sweep's results in storage: `trials.json` (the table, kept current) and `best.json`.

Both are plain JSON next to Tune's own experiment files, so `rayfleet sweep results` and
serving (`source: {sweep: NAME}`) read them from storage alone, with no Ray and no pickles.
`best.json` names the best trial's newest *verified* checkpoint, and its value is the metric
recorded in that checkpoint's manifest, so what serving loads is what the table promised.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from rayfleet.errors import StorageError, WorkFailedError
from rayfleet.storage.checkpoints import newest_verified
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import StorageURI

TRIALS_FILE = "trials.json"
BEST_FILE = "best.json"


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]
    state: str  # PENDING, RUNNING, DONE, STOPPED (early, by the scheduler), ERROR
    epochs_done: int = 0
    value: float | None = None  # the sweep metric, last reported
    error: str | None = None


@dataclass
class SweepTable:
    sweep: str
    metric: str
    mode: str
    epochs: int  # epochs a trial runs when nothing stops it
    trials: list[TrialRow] = field(default_factory=list)

    @property
    def epochs_consumed(self) -> int:
        return sum(t.epochs_done for t in self.trials)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out


def row_state(status: str, epochs_done: int, epochs: int) -> str:
    """Tune's trial status in the words of the table: a TERMINATED trial that did not run
    all its epochs was stopped early by the scheduler."""
    if status == "TERMINATED":
        return "DONE" if epochs_done >= epochs else "STOPPED"
    if status == "ERROR":
        return "ERROR"
    return status  # PENDING, RUNNING, PAUSED


def _write_json(fs: pafs.FileSystem, path: str, doc: dict[str, Any]) -> None:
    """Write whole-or-nothing: S3 PUTs are atomic; locally, write a temp file and move it."""
    data = json.dumps(doc, indent=2, sort_keys=True).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
        return
    with fs.open_output_stream(path) as out:
        out.write(data)


def _read_json(fs: pafs.FileSystem, path: str) -> dict[str, Any] | None:
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None


def write_table(uri: StorageURI, table: SweepTable) -> None:
    doc = {**asdict(table), "updated": time.time()}
    _write_json(filesystem_for(uri), uri.join(TRIALS_FILE).fs_path, doc)


def read_table(uri: StorageURI) -> SweepTable | None:
    doc = _read_json(filesystem_for(uri), uri.join(TRIALS_FILE).fs_path)
    if doc is None:
        return None
    rows = [TrialRow(**row) for row in doc.pop("trials")]
    doc.pop("updated", None)
    return SweepTable(**doc, trials=rows)


def read_best(uri: StorageURI) -> dict[str, Any] | None:
    return _read_json(filesystem_for(uri), uri.join(BEST_FILE).fs_path)


def promote_best(uri: StorageURI, table: SweepTable, run_uri_of) -> dict[str, Any]:
    """Pick the best trial by the metric in its newest verified checkpoint; write best.json.

    `run_uri_of(trial_id)` gives a trial's run location. Trials without a verified checkpoint
    (errored before their first one) cannot be best.
    """
    fs = filesystem_for(uri)
    candidates = []
    for row in table.trials:
        run_uri = run_uri_of(row.trial_id)
        ref, _ = newest_verified(fs, run_uri.fs_path)
        value = (ref.meta.get("metrics") or {}).get(table.metric) if ref else None
        if value is not None:
            candidates.append((float(value), row, ref, run_uri))
    if not candidates:
        raise WorkFailedError(
            f"sweep {table.sweep}: no trial left a verified checkpoint reporting "
            f"{table.metric}; see the trial errors with `rayfleet sweep results {table.sweep}`"
        )
    pick = max if table.mode == "max" else min
    value, row, ref, run_uri = pick(candidates, key=lambda c: c[0])
    best = {
        "sweep": table.sweep,
        "metric": table.metric,
        "mode": table.mode,
        "value": value,
        "trial_id": row.trial_id,
        "params": row.params,
        "epoch": ref.epoch,
        "checkpoint": str(run_uri.at(ref.path)),
    }
    _write_json(fs, uri.join(BEST_FILE).fs_path, best)
    return best


def require_results(uri: StorageURI, name: str) -> tuple[SweepTable, dict[str, Any] | None]:
    """The table and best trial of a sweep, or one clear line when there is none."""
    table = read_table(uri)
    if table is None:
        raise StorageError(
            f"no sweep {name!r} at {uri} ({TRIALS_FILE} missing); check the name and --storage"
        )
    return table, read_best(uri)
