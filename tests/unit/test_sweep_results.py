"""Sweep bookkeeping without Ray: table states, trials.json round trip, best.json promotion."""

import json

import pytest

from rayfleet.errors import StorageError, WorkFailedError
from rayfleet.storage.checkpoints import checkpoint_dir_name, write_manifest
from rayfleet.storage.uri import parse_uri
from rayfleet.tune import results
from rayfleet.tune.results import SweepTable, TrialRow

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "status, done, state",
    [
        ("TERMINATED", 6, "DONE"),
        ("TERMINATED", 2, "STOPPED"),
        ("ERROR", 3, "ERROR"),
        ("RUNNING", 1, "RUNNING"),
        ("PENDING", 0, "PENDING"),
    ],
)
def test_row_state(status, done, state):
    assert results.row_state(status, done, 6) == state


def _table(*rows):
    return SweepTable(sweep="s", metric="val_accuracy", mode="max", epochs=6, trials=list(rows))


def _row(trial_id, params, state, epochs_done=0, value=None):
    return TrialRow(
        trial_id=trial_id, params=params, state=state, epochs_done=epochs_done, value=value
    )


def _checkpoint(run, epoch, accuracy):
    folder = run / checkpoint_dir_name(epoch, "0abc")
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"weights" * 10)
    write_manifest(folder, {"epoch": epoch, "metrics": {"val_accuracy": accuracy}})
    return folder


def test_table_round_trips_through_storage(tmp_path):
    uri = parse_uri(str(tmp_path / "sweeps" / "s"))
    table = _table(_row("a_1", {"run.learningRate": 0.01}, "DONE", 6, 0.97))
    results.write_table(uri, table)
    assert results.read_table(uri) == table
    assert not list((tmp_path / "sweeps" / "s").glob("*.tmp"))
    assert table.epochs_consumed == 6 and table.counts() == {"DONE": 1}


def test_best_is_the_newest_verified_checkpoint_of_the_best_trial(tmp_path):
    uri = parse_uri(str(tmp_path / "sweeps" / "s"))
    root = tmp_path / "sweeps" / "s"
    _checkpoint(root / "a" / "train", 5, 0.95)
    _checkpoint(root / "b" / "train", 4, 0.96)
    newest = _checkpoint(root / "b" / "train", 5, 0.99)
    (newest / "state.pt").write_bytes(b"truncated")  # b's newest no longer verifies
    _checkpoint(root / "c" / "train", 0, 0.40)
    table = _table(
        _row("a", {"p": 1}, "DONE", 6, 0.95),
        _row("b", {"p": 2}, "DONE", 6, 0.99),
        _row("c", {"p": 3}, "STOPPED", 1, 0.40),
        _row("d", {"p": 4}, "ERROR", 0, None),
    )
    best = results.promote_best(uri, table, lambda tid: uri.join(tid, "train"))
    assert best.trial_id == "b" and best.value == 0.96 and best.epoch == 4
    assert best.checkpoint.endswith("b/train/" + checkpoint_dir_name(4, "0abc"))
    assert json.loads((root / "best.json").read_text()) == best.model_dump()
    assert results.read_best(uri) == best


def test_no_verified_checkpoint_means_no_best(tmp_path):
    uri = parse_uri(str(tmp_path / "s"))
    with pytest.raises(WorkFailedError, match="no trial left a verified checkpoint"):
        results.promote_best(uri, _table(_row("a", {}, "ERROR")), lambda t: uri.join(t))


def test_results_of_an_unknown_sweep_is_bad_input(tmp_path):
    with pytest.raises(StorageError, match="no sweep 'x' at"):
        results.require_results(parse_uri(str(tmp_path / "x")), "x")


def test_search_space_maps_to_tune_domains():
    from ray import tune

    from rayfleet.specs.sweep import Domain
    from rayfleet.tune.search import tune_domain

    assert isinstance(tune_domain(Domain(loguniform=(1e-4, 1e-2))), tune.search.sample.Float)
    assert tune_domain(Domain(grid=[1, 2])) == {"grid_search": [1, 2]}
    assert tune_domain(Domain(choice=[1, 2]), as_grid=True) == {"grid_search": [1, 2]}
    assert isinstance(tune_domain(Domain(randint=(1, 4))), tune.search.sample.Integer)


def test_spec_choices_map_to_tune_searchers_and_schedulers():
    from pathlib import Path

    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from rayfleet.specs import load_spec
    from rayfleet.tune.search import scheduler as _scheduler
    from rayfleet.tune.search import search_alg as _search_alg
    from rayfleet.tune.space import prepare

    sweep = Path(__file__).resolve().parents[2] / "jobs" / "digits" / "sweep.yaml"

    def prep(*overrides):
        return prepare(load_spec(sweep, list(overrides)), source_dir=sweep.parent)

    assert isinstance(_search_alg(prep(), 2), BasicVariantGenerator)
    assert isinstance(_search_alg(prep("spec.search.algorithm=tpe"), 2), OptunaSearch)
    assert isinstance(_scheduler(prep()), AsyncHyperBandScheduler)
    median = _scheduler(prep("spec.scheduler.type=median"))
    assert isinstance(median, MedianStoppingRule)
    assert isinstance(_scheduler(prep("spec.scheduler.type=fifo")), FIFOScheduler)
