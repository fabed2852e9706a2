"""`sweep --resume` without Tune's pickles: the plan of a launch, the Tune searchers it turns
into (Tune's own variant generation and Optuna, no Ray started), the combined table, and the
typed trials.json / best.json documents read strictly."""

import json
from pathlib import Path

import pytest
import yaml

from rayfleet.errors import SpecError, StorageError
from rayfleet.specs import parse_spec
from rayfleet.storage.uri import parse_uri
from rayfleet.tune import results
from rayfleet.tune.documents import SweepTable, TrialRow
from rayfleet.tune.replay import Launch, grid_points, plan_fresh, plan_resume
from rayfleet.tune.space import prepare

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "jobs" / "digits" / "sweep.yaml"
LR, CH, DROP = "run.learningRate", "model.config.channels", "model.config.dropout"


def _prep(tmp_path=None, **spec):
    doc = yaml.safe_load(SWEEP.read_text())
    doc["spec"].update(spec)
    if tmp_path is not None:
        doc["spec"]["storage"] = str(tmp_path)
    return prepare(parse_spec(doc, source="sweep.yaml"), source_dir=SWEEP.parent)


def _row(trial_id, state, epochs_done=0, value=None, **params):
    params = params or {LR: 0.001, CH: 8, DROP: 0.1}
    return TrialRow(
        trial_id=trial_id, params=params, state=state, epochs_done=epochs_done, value=value
    )


def _table(*rows, launches=1, epochs=5):
    return SweepTable(
        sweep="digits-sweep",
        metric="val_accuracy",
        mode="max",
        epochs=epochs,
        trials=list(rows),
        launches=launches,
    )


MIXED = (
    _row("a_00000", "DONE", 5, 0.97),
    _row("a_00001", "STOPPED", 1, 0.40),
    _row("a_00002", "RUNNING", 3, 0.90),
    _row("a_00003", "PENDING"),
    _row("a_00004", "ERROR", 2, 0.5),
)


# ----------------------------------------------------------------------------- planning


def test_fresh_sweep_samples_everything_with_the_spec_seed():
    launch = plan_fresh(_prep())
    assert launch == Launch(number=1, free_samples=6)
    assert launch.tune_samples == 6 and launch.seed(7) == 7


def test_resume_keeps_finished_reruns_unfinished_and_samples_the_missing():
    launch = plan_resume(_prep(numSamples=8), _table(*MIXED), retry_errored=False)
    assert [r.trial_id for r in launch.kept] == ["a_00000", "a_00001", "a_00004"]
    assert [r.trial_id for r in launch.rerun] == ["a_00002", "a_00003"]
    assert launch.free_samples == 3 and launch.new_points == []  # 8 wanted, 5 in the table
    assert launch.number == 2 and launch.tune_samples == 5
    assert launch.seed(7) not in (7, None)  # a new draw, not the first launch's points again
    assert launch.seed(None) is None


def test_retry_errored_reruns_errored_trials_too():
    launch = plan_resume(_prep(), _table(*MIXED, launches=3), retry_errored=True)
    assert [r.trial_id for r in launch.kept] == ["a_00000", "a_00001"]
    assert [r.trial_id for r in launch.rerun] == ["a_00002", "a_00003", "a_00004"]
    assert launch.free_samples == 1 and launch.number == 4


def test_a_finished_sweep_has_nothing_left_to_run():
    rows = [_row(f"a_{i:05d}", "DONE", 5, 0.9) for i in range(6)]
    launch = plan_resume(_prep(), _table(*rows), retry_errored=True)
    assert launch.tune_samples == 0 and len(launch.kept) == 6


def test_grid_resume_runs_only_the_grid_points_not_yet_run():
    prep = _prep(
        search={"algorithm": "grid"},
        searchSpace={CH: {"choice": [8, 16, 32]}, LR: {"grid": [0.001, 0.01]}},
        numSamples=2,
    )
    assert len(grid_points(prep)) == 12
    ran = [
        _row("g_00000", "DONE", 5, 0.9, **{CH: 8, LR: 0.001}),
        _row("g_00001", "DONE", 5, 0.9, **{CH: 8, LR: 0.001}),
        _row("g_00002", "RUNNING", 2, 0.5, **{CH: 16, LR: 0.01}),
    ]
    launch = plan_resume(prep, _table(*ran), retry_errored=False)
    assert [r.trial_id for r in launch.rerun] == ["g_00002"]
    assert launch.free_samples == 0 and len(launch.new_points) == 9
    assert {CH: 8, LR: 0.001} not in launch.new_points
    assert launch.new_points.count({CH: 16, LR: 0.01}) == 1
    assert launch.new_points.count({CH: 32, LR: 0.001}) == 2


def test_random_search_with_a_grid_key_fixes_only_the_grid_values():
    prep = _prep(searchSpace={CH: {"grid": [8, 16]}, LR: {"loguniform": [1e-4, 1e-2]}})
    ran = [_row("r_00000", "DONE", 5, 0.9, **{CH: 8, LR: 0.002})]
    launch = plan_resume(prep, _table(*ran), retry_errored=False)
    assert sorted(p[CH] for p in launch.new_points) == [8] * 5 + [16] * 6
    assert all(set(p) == {CH} for p in launch.new_points)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"metric": "val_loss", "mode": "min"}, "was run with metric val_accuracy"),
        ({"searchSpace": {LR: {"loguniform": [1e-4, 1e-2]}}}, "the spec searches"),
    ],
)
def test_resume_with_a_different_spec_is_refused(change, match):
    with pytest.raises(SpecError, match=match):
        plan_resume(_prep(**change), _table(*MIXED), retry_errored=False)


# ---------------------------------------------------------------- the searchers it becomes


def _generated(prep, launch):
    """The trial configs Tune's own variant generation makes of a launch (no Ray)."""
    from ray.tune.experiment import Experiment

    from rayfleet.tune.search import param_space, search_alg

    def trainable(config):
        return None

    gen = search_alg(prep, 2, launch)
    gen.max_concurrent = 0  # take every trial at once
    gen.add_configurations(
        [Experiment("t", run=trainable, config=param_space(prep), num_samples=launch.tune_samples)]
    )
    out = []
    while (trial := gen.next_trial()) is not None:
        out.append(trial.config)
    return out


def test_random_resume_becomes_reruns_with_their_ids_then_new_draws():
    from rayfleet.tune.trial import TRIAL_ID_KEY

    prep = _prep(numSamples=8)
    configs = _generated(prep, plan_resume(prep, _table(*MIXED), retry_errored=False))
    assert len(configs) == 5
    assert [c[TRIAL_ID_KEY] for c in configs] == ["a_00002", "a_00003", None, None, None]
    assert {k: configs[0][k] for k in (LR, CH, DROP)} == MIXED[2].params
    fresh = _generated(prep, plan_fresh(prep))  # the first launch's draws
    new = [(c[LR], c[DROP]) for c in configs[2:]]
    assert not set(new) & {(c[LR], c[DROP]) for c in fresh}


def test_grid_resume_becomes_exactly_the_missing_grid_points():
    from rayfleet.tune.trial import TRIAL_ID_KEY

    prep = _prep(search={"algorithm": "grid"}, searchSpace={CH: {"choice": [8, 16, 32]}})
    ran = [
        _row("g_00000", "DONE", 5, 0.9, **{CH: 8}),
        _row("g_00001", "RUNNING", 2, 0.5, **{CH: 16}),
    ]
    configs = _generated(prep, plan_resume(prep, _table(*ran), retry_errored=False))
    assert len(configs) == 6 * 3 - 2 + 1  # the grid x numSamples, less the two ran, + rerun
    assert configs[0] == {CH: 16, TRIAL_ID_KEY: "g_00001"}
    assert sorted(c[CH] for c in configs[1:]) == [8] * 5 + [16] * 5 + [32] * 6


def test_tpe_resume_replays_reruns_then_optuna_knows_the_finished_trials():
    from ray.tune.search.optuna import OptunaSearch

    from rayfleet.tune.search import ReplaySearcher, param_space, search_alg
    from rayfleet.tune.trial import TRIAL_ID_KEY

    prep = _prep(search={"algorithm": "tpe", "seed": 3})
    launch = plan_resume(prep, _table(*MIXED), retry_errored=False)
    searcher = search_alg(prep, 2, launch)
    assert isinstance(searcher, ReplaySearcher) and isinstance(searcher.searcher, OptunaSearch)
    searcher.set_search_properties("val_accuracy", "max", param_space(prep))
    study = searcher.searcher._ot_study
    assert sorted(t.value for t in study.trials) == [0.40, 0.97]  # DONE + STOPPED, told

    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert first == {**MIXED[2].params, TRIAL_ID_KEY: "a_00002"}
    assert second[TRIAL_ID_KEY] == "a_00003"
    third = searcher.suggest("t3")  # Optuna's own
    assert TRIAL_ID_KEY not in third and set(third) == {LR, CH, DROP}
    searcher.on_trial_complete("t1", {"val_accuracy": 0.93})  # a rerun finished: Optuna hears
    assert sorted(t.value for t in study.trials if t.value is not None) == [0.40, 0.93, 0.97]
    searcher.on_trial_complete("t3", {"val_accuracy": 0.5})
    assert sum(t.value == 0.5 for t in study.trials) == 1


def test_tpe_without_reruns_is_plain_optuna():
    from ray.tune.search.optuna import OptunaSearch

    from rayfleet.tune.search import search_alg

    prep = _prep(search={"algorithm": "tpe"})
    done = [_row("a_00000", "DONE", 5, 0.97)]
    launch = plan_resume(prep, _table(*done), retry_errored=False)
    assert type(search_alg(prep, 2, launch)) is OptunaSearch
    assert type(search_alg(prep, 2)) is OptunaSearch


# ----------------------------------------------------------------------- the live table


def test_the_table_shows_kept_rows_and_reruns_under_their_own_id():
    from ray.tune.experiment import Trial

    from rayfleet.tune.runner import TableCallback
    from rayfleet.tune.trial import TRIAL_ID_KEY

    prep = _prep()
    launch = plan_resume(prep, _table(*MIXED), retry_errored=False)
    rerun = Trial("t", config={**MIXED[2].params, TRIAL_ID_KEY: "a_00002"}, stub=True)
    new = Trial("t", config={**MIXED[0].params, TRIAL_ID_KEY: None}, trial_id="b_1", stub=True)
    callback = TableCallback(prep, launch)
    table = callback._snapshot([rerun, new])
    assert [r.trial_id for r in table.trials] == [
        "a_00000", "a_00001", "a_00002", "a_00004", "b_1",
    ]  # fmt: skip
    shown = table.trials[2]
    assert shown.params == MIXED[2].params  # the reserved key is not a param
    assert (shown.state, shown.epochs_done, shown.value) == ("PENDING", 3, 0.90)
    assert table.launches == 2

    rerun.update_last_result({"epochs_done": 4, "val_accuracy": 0.95})
    rerun.set_status(Trial.TERMINATED)
    shown = callback._snapshot([rerun, new]).trials[2]
    assert (shown.state, shown.epochs_done, shown.value) == ("STOPPED", 4, 0.95)


# ------------------------------------------------------------------ launching or refusing


def test_launch_refuses_an_existing_sweep_without_resume_and_a_missing_one_with(tmp_path):
    from rayfleet.tune.runner import plan_launch

    prep = _prep(tmp_path)
    with pytest.raises(SpecError, match="nothing to resume .*trials.json"):
        plan_launch(prep, resume=True, retry_errored=False)
    assert plan_launch(prep, resume=False, retry_errored=False).number == 1
    results.write_table(prep.uri, _table(*MIXED))
    with pytest.raises(SpecError, match="already exists.*--resume"):
        plan_launch(prep, resume=False, retry_errored=False)
    assert plan_launch(prep, resume=True, retry_errored=False).number == 2


# ------------------------------------------------------------------------ the documents


def _stored(tmp_path, doc) -> Path:
    path = tmp_path / "trials.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


GOOD = {
    "sweep": "s",
    "metric": "val_accuracy",
    "mode": "max",
    "epochs": 5,
    "updated": 1.0,
    "trials": [
        {"trial_id": "a_1", "params": {"p": 1}, "state": "DONE", "epochs_done": 5, "value": 1},
    ],
}


def test_a_table_written_before_launches_were_counted_still_reads(tmp_path):
    _stored(tmp_path, GOOD)
    table = results.read_table(parse_uri(str(tmp_path)))
    assert table.launches == 1 and table.trials[0].value == 1.0


@pytest.mark.security
@pytest.mark.parametrize(
    "change, where",
    [
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
        ({"epochs": "5"}, "epochs: Input should be a valid integer"),
        ({"mode": "best"}, "mode: Input should be 'max' or 'min'"),
        ({"trials": [{**GOOD["trials"][0], "state": "TERMINATED"}]}, "trials.0.state"),
        ({"trials": [{**GOOD["trials"][0], "trial_id": "../../runs/x"}]}, "trials.0.trial_id"),
        ({"trials": [{**GOOD["trials"][0], "epochs_done": -1}]}, "trials.0.epochs_done"),
        ({"trials": {"a_1": {}}}, "trials: Input should be a valid array"),
    ],
)
def test_a_bad_trials_json_is_refused_in_one_line(tmp_path, change, where):
    """trials.json drives what a resume runs and where: anything but a table is refused."""
    path = _stored(tmp_path, {**GOOD, **change})
    with pytest.raises(StorageError) as info:
        results.read_table(parse_uri(str(tmp_path)))
    message = str(info.value)
    assert message.startswith(f"trials.json at {path} is not a valid sweep table: {where}")
    assert "\n" not in message and info.value.exit_code == 2


@pytest.mark.security
def test_a_trials_json_that_is_not_json_is_refused_in_one_line(tmp_path):
    _stored(tmp_path, "\x80\x04\x95 not json")
    with pytest.raises(StorageError, match="not a valid sweep table") as info:
        results.require_results(parse_uri(str(tmp_path)), "s")
    assert "\n" not in str(info.value)


def test_a_bad_best_json_is_refused_in_one_line(tmp_path):
    _stored(tmp_path, GOOD)
    (tmp_path / "best.json").write_text(json.dumps({"sweep": "s", "checkpoint": 3}))
    with pytest.raises(StorageError, match="best.json at .* is not a valid best-trial record"):
        results.require_results(parse_uri(str(tmp_path)), "s")
