"""SweepJob validation: every mistake fails before a trial starts, naming the key."""

from pathlib import Path

import pytest
import yaml

from rayfleet.errors import SpecError
from rayfleet.specs import load_spec, parse_spec
from rayfleet.tune.space import prepare, trial_doc

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SWEEP = REPO / "jobs" / "digits" / "sweep.yaml"


def _sweep(**changes):
    doc = yaml.safe_load(SWEEP.read_text())
    doc["spec"].update(changes)
    return doc


def _prepare(doc):
    return prepare(parse_spec(doc, source="sweep.yaml"), source_dir=SWEEP.parent)


SHIPPED_SWEEPS = [
    p
    for p in sorted((REPO / "jobs").rglob("*.yaml"))
    if yaml.safe_load(p.read_text())["kind"] == "SweepJob"
]


@pytest.mark.parametrize("path", SHIPPED_SWEEPS, ids=str)
def test_every_shipped_sweep_prepares(path):
    prep = prepare(load_spec(path), source_dir=path.parent)
    assert prep.base.spec.run.epochs > prep.sweep.spec.scheduler.grace_period


def test_shipped_sweep_resolves_train_job_with_overrides():
    prep = prepare(load_spec(SWEEP), source_dir=SWEEP.parent)
    assert prep.base.spec.run.epochs == 5
    assert prep.base.spec.scaling.num_workers == 1
    assert prep.base.spec.model.recipe == "digits-cnn"
    assert str(prep.uri).endswith("/sweeps/digits-sweep")


def test_inline_train_job():
    doc = _sweep(
        trainJob={
            "spec": {
                "model": {"recipe": "synthetic-mlp", "config": {"hidden": 64}},
                "run": {"epochs": 3},
            }
        },
        searchSpace={"model.config.hidden": {"choice": [32, 64]}},
        metric="loss",
        mode="min",
    )
    prep = _prepare(doc)
    assert prep.base.spec.model.config == {"hidden": 64}


@pytest.mark.parametrize(
    "space, fragment",
    [
        ({}, "searchSpace is empty"),
        ({"run.learnRate": {"choice": [0.1]}}, r"spec\.searchSpace\.run\.learnRate: 'learnRate'"),
        ({"runs.epochs": {"choice": [2]}}, r"spec\.searchSpace\.runs\.epochs: 'runs'"),
        ({"run": {"choice": [2]}}, r"spec\.searchSpace\.run: run is a section"),
        ({"run.epochs.x": {"choice": [2]}}, r"run\.epochs has no sub-keys"),
        ({"model.config.width": {"choice": [8]}}, r"has no config key 'width'; known: channels"),
        ({"run.epochs": {"choice": [0, 3]}}, r"spec\.searchSpace\.run\.epochs value 0: .*"),
        ({"run.learningRate": {"loguniform": [0, 0.1]}}, r"loguniform: both bounds must be > 0"),
        ({"run.learningRate": {"uniform": [0.1, 0.01]}}, r"low must be below high"),
        ({"run.learningRate": {"choice": []}}, r"choice needs at least one value"),
        (
            {"run.learningRate": {"choice": [0.1], "uniform": [0.1, 0.2]}},
            r"set exactly one of .* \(got choice, uniform\)",
        ),
        ({"scaling.numWorkers": {"randint": [0, 2]}}, r"scaling\.numWorkers value 0"),
    ],
)
def test_bad_search_space_is_named(space, fragment):
    with pytest.raises(SpecError, match=fragment):
        _prepare(_sweep(searchSpace=space))


def test_metric_the_recipe_never_reports():
    with pytest.raises(SpecError, match=r"spec\.metric: recipe digits-cnn never reports 'acc'"):
        _prepare(_sweep(metric="acc"))


def test_grid_takes_only_discrete_values():
    with pytest.raises(SpecError, match=r"searchSpace\.run\.learningRate: .*grid takes grid"):
        _prepare(_sweep(search={"algorithm": "grid"}))


def test_tpe_refuses_grid():
    space = {"model.config.channels": {"grid": [8, 16]}}
    with pytest.raises(SpecError, match=r"tpe samples its own points"):
        _prepare(_sweep(search={"algorithm": "tpe"}, searchSpace=space))


def test_grace_period_must_leave_room():
    with pytest.raises(SpecError, match=r"spec\.scheduler\.gracePeriod: 6 leaves no room"):
        _prepare(_sweep(scheduler={"type": "asha", "gracePeriod": 6}))


def test_bad_override_is_named():
    doc = _sweep()
    doc["spec"]["trainJob"]["overrides"] = {"run.epoch": 3}
    with pytest.raises(SpecError, match=r"spec\.trainJob\.overrides\.run\.epoch: 'epoch'"):
        _prepare(doc)


def test_missing_train_job_file_is_named(tmp_path):
    doc = _sweep()
    doc["spec"]["trainJob"] = {"path": "nope.yaml"}
    with pytest.raises(SpecError, match=r"nope\.yaml: no such spec file"):
        _prepare(doc)


def test_running_a_sweep_with_run_points_at_sweep():
    with pytest.raises(SpecError, match=r"is a SweepJob, not a TrainJob; .*rayfleet sweep"):
        load_spec(SWEEP, expect="TrainJob")


def test_trial_doc_applies_params_and_name():
    prep = prepare(load_spec(SWEEP), source_dir=SWEEP.parent)
    doc = trial_doc(prep.base_doc, {"run.learningRate": 0.01, "model.config.channels": 8}, "t-1")
    job = parse_spec(doc)
    assert job.name == "t-1"
    assert job.spec.run.learning_rate == 0.01
    assert job.spec.model.config["channels"] == 8
    assert prep.base.spec.model.config["channels"] == 32  # the base is untouched
