"""A sweep's results in storage: `trials.json` (the table, kept current) and `best.json`.

Both are plain JSON documents (typed in `rayfleet.tune.documents`), so `rayfleet sweep
results`, serving (`source: {sweep: NAME}`) and `sweep --resume` read them from storage alone,
with no Ray and no pickles. `best.json` names the best trial's newest *verified* checkpoint,
and its value is the metric recorded in that checkpoint's manifest, so what serving loads is
what the table promised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from rayfleet import record, usage
from rayfleet.errors import BadInputError, StorageError, WorkFailedError
from rayfleet.evaluation.document import EVALUATION_FILE, Evaluation
from rayfleet.storage import documents
from rayfleet.storage.checkpoints import list_checkpoints, newest_verified
from rayfleet.storage.filesystem import exists, filesystem_for, read_bytes, write_bytes
from rayfleet.storage.uri import StorageURI
from rayfleet.tune.documents import (
    BEST_FILE,
    TRIALS_FILE,
    BestTrial,
    SweepTable,
    TrialRow,
    dump_best,
    dump_table,
    parse_best,
    parse_table,
)
from rayfleet.tune.trial import trial_run_uri

T = TypeVar("T")

__all__ = [
    "BEST_FILE",
    "TRIALS_FILE",
    "BestTrial",
    "SweepTable",
    "TrialRow",
    "promote_best",
    "read_best",
    "required_best",
    "read_table",
    "require_results",
    "row_state",
    "sweep_usage",
    "table_exists",
    "trial_evaluations",
    "write_table",
    "write_usage",
]


def row_state(status: str, epochs_done: int, epochs: int) -> str:
    """Tune's trial status in the words of the table: a TERMINATED trial that did not run
    all its epochs was stopped early by the scheduler."""
    if status == "TERMINATED":
        return "DONE" if epochs_done >= epochs else "STOPPED"
    if status == "ERROR":
        return "ERROR"
    return status  # PENDING, RUNNING, PAUSED


def _read(uri: StorageURI, parse: Callable[[bytes, str], T]) -> T | None:
    """Read and parse a document; None when there is none.

    Read with one GET (storage.documents), never pyarrow's HEAD-then-ranged-GET, which can
    return a document cut to its old length while the driver rewrites it (seen with
    `sweep results` and a poller reading trials.json)."""
    data = documents.read(uri).data
    return None if data is None else parse(data, str(uri))


def write_table(uri: StorageURI, table: SweepTable) -> None:
    """Write trials.json whole (write_bytes is atomic locally; S3 PUTs are atomic)."""
    path = uri.join(TRIALS_FILE)
    write_bytes(filesystem_for(path), path.fs_path, dump_table(table, time.time()))


def table_exists(uri: StorageURI) -> bool:
    path = uri.join(TRIALS_FILE)
    return exists(filesystem_for(path), path.fs_path)


def read_table(uri: StorageURI) -> SweepTable | None:
    """The sweep's table; None when there is none; StorageError when it is not a table."""
    return _read(uri.join(TRIALS_FILE), parse_table)


def read_best(uri: StorageURI) -> BestTrial | None:
    return _read(uri.join(BEST_FILE), parse_best)


def required_best(
    uri: StorageURI, sweep: str, *, fix: str, error: type[BadInputError] = BadInputError
) -> BestTrial:
    """Sweep `sweep`'s best trial (best.json at `uri`) for a command that needs one: `error`
    (one line, ending with `fix`) when it is missing or unreadable."""
    try:
        best = read_best(uri)
    except StorageError as exc:
        raise error(f"sweep {sweep}: {exc}") from None
    if best is None:
        raise error(
            f"sweep {sweep}: no {BEST_FILE} at {uri.join(BEST_FILE)}; run the sweep to the end "
            f"first, or {fix}"
        )
    return best


def promote_best(uri: StorageURI, table: SweepTable, run_uri_of) -> BestTrial:
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
    best = BestTrial(
        sweep=table.sweep,
        metric=table.metric,
        mode=table.mode,
        value=value,
        trial_id=row.trial_id,
        params=row.params,
        epoch=ref.epoch,
        checkpoint=str(run_uri.at(ref.path)),
    )
    write_bytes(fs, uri.join(BEST_FILE).fs_path, dump_best(best))
    return best


def require_results(uri: StorageURI, name: str) -> tuple[SweepTable, BestTrial | None]:
    """The table and best trial of a sweep, or one clear line when there is none."""
    table = read_table(uri)
    if table is None:
        raise StorageError(
            f"no sweep {name!r} at {uri} ({TRIALS_FILE} missing); check the name and --storage"
        )
    return table, read_best(uri)


def sweep_usage(
    uri: StorageURI, table: SweepTable, prices: usage.Prices | None
) -> usage.SweepUsage:
    """The sweep's usage from its trials' run records (`<sweep>/<trial>/train/record.json`,
    kept by the driver as trials start and end), with what early stopping saved; priced at
    `prices`, else at the prices the trials were recorded with."""

    trials = []
    for row in table.trials:
        run_uri = trial_run_uri(uri, row.trial_id)
        stored = (record.read(filesystem_for(run_uri), run_uri) or {}).get("usage")
        found = usage.RunUsage.model_validate(stored) if stored else None
        trials.append((row.trial_id, row.state, row.epochs_done, found))
    return usage.sweep_usage(table.epochs, trials, prices, f"sweep {table.sweep}")


def write_usage(uri: StorageURI, sweep, found: usage.SweepUsage) -> None:
    """Put a finished sweep's usage in its record (`<sweep>/record.json`, the one `jobs
    describe` reads), keeping what the submitting CLI wrote there."""

    def change(doc: dict) -> None:
        doc.setdefault("name", sweep.name)
        doc.setdefault("kind", sweep.kind)
        doc.setdefault("spec", sweep.model_dump(mode="json", by_alias=True))
        doc.setdefault("status", "SUCCEEDED")  # a local sweep: no submission says so
        doc.setdefault("finished", record.now())
        doc["usage"] = found.model_dump(mode="json", by_alias=True)
        doc["updated"] = record.now()

    record.update(filesystem_for(uri), uri, change)


# `rayfleet evaluate` scores, by the name `sweep results --sort-by` takes; True: higher is better.
EVALUATED = {
    "accuracy": True,
    "macro_f1": True,
    "weighted_f1": True,
    "macro_precision": True,
    "macro_recall": True,
    "roc_auc": True,
    "log_loss": False,
}


def trial_evaluations(
    table: SweepTable, run_uri_of: Callable[[str], StorageURI]
) -> dict[str, dict[str, float]]:
    """Each trial's `rayfleet evaluate` scores (`Scores.flat`), from the evaluation.json of
    its newest checkpoint that has one; trials never evaluated are left out. A document that
    does not parse is skipped, as if absent: it is a report, not an input."""
    found: dict[str, dict[str, float]] = {}
    for row in table.trials:
        run = run_uri_of(row.trial_id)
        fs = filesystem_for(run)
        for _, path in list_checkpoints(fs, run.fs_path):
            if not exists(fs, f"{path}/{EVALUATION_FILE}"):
                continue
            try:
                doc = Evaluation.model_validate_json(read_bytes(fs, f"{path}/{EVALUATION_FILE}"))
            except ValueError:
                continue
            found[row.trial_id] = doc.metrics.flat("")
            break
    return found


def sort_by_evaluation(
    table: SweepTable, scores: dict[str, dict[str, float]], key: str
) -> list[TrialRow]:
    """The trials best first by an evaluated score (EVALUATED says which way is better);
    trials without that score last, in table order."""
    better_high = EVALUATED[key]
    scored = [r for r in table.trials if key in scores.get(r.trial_id, {})]
    rest = [r for r in table.trials if r not in scored]
    scored.sort(key=lambda r: scores[r.trial_id][key], reverse=better_high)
    return [*scored, *rest]
