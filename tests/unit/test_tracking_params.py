"""Tracking's pure parts: when it is on, how a spec becomes MLflow params, which metrics go."""

from __future__ import annotations

import pytest

from rayfleet import tracking
from rayfleet.specs import load_spec
from rayfleet.specs.tracking import TrackingSpec

from ..conftest import REPO

pytestmark = pytest.mark.unit


def test_flatten_dots_keys_and_keeps_values_mlflow_can_store():
    doc = {
        "model": {"recipe": "digits-cnn", "config": {"hidden": 64, "layers": [1, 2]}, "x": {}},
        "run": {"learningRate": 0.01, "seed": None, "bf16": True},
        "long": "a" * 7000,
    }
    flat = tracking.flatten(doc)
    assert flat["model.recipe"] == "digits-cnn"
    assert flat["model.config.hidden"] == "64"
    assert flat["model.config.layers"] == "[1, 2]"
    assert flat["run.learningRate"] == "0.01" and flat["run.bf16"] == "True"
    assert "run.seed" not in flat and "model.x" not in flat
    assert len(flat["long"]) == tracking.MAX_PARAM_LEN and flat["long"].endswith("...")


def test_numeric_keeps_finite_numbers_only():
    got = tracking.numeric({"epoch": 3, "loss": 0.5, "ok": True, "nan": float("nan"), "s": "x"})
    assert got == {"loss": 0.5, "ok": 1.0}


def test_tracking_is_off_without_a_uri_and_the_spec_wins_over_the_env():
    spec = TrackingSpec.model_validate({"mlflow": {"uri": "http://127.0.0.1:5000"}})
    assert tracking.target_for(TrackingSpec(), env={}) is None
    assert tracking.target_for(spec, env={"MLFLOW_TRACKING_URI": "http://other"}) == (
        tracking.Target("http://127.0.0.1:5000", "rayfleet")
    )
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1", "MLFLOW_EXPERIMENT_NAME": "e"}
    assert tracking.target_for(None, TrackingSpec(), env=env) == tracking.Target(
        "http://127.0.0.1:1", "e"
    )


def test_tracking_is_not_part_of_the_training_identity():
    path = REPO / "jobs" / "ray-loop" / "train.yaml"
    plain = load_spec(path, [], expect="TrainJob")
    tracked = load_spec(path, ["spec.tracking.mlflow.uri=http://127.0.0.1:5000"], expect="TrainJob")
    assert tracked.spec.tracking.mlflow.uri == "http://127.0.0.1:5000"
    assert plain.spec_hash() == tracked.spec_hash()


def test_a_tracking_uri_with_a_variable_is_refused():
    from rayfleet.errors import SpecError

    path = REPO / "jobs" / "ray-loop" / "train.yaml"
    with pytest.raises(SpecError, match="not expanded"):
        load_spec(path, ["spec.tracking.mlflow.uri=$MLFLOW_TRACKING_URI"], expect="TrainJob")
