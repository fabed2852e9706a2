"""What `rayfleet serve status` shows of a rollout, from Serve's replica details (pure), and the
model version a checkpoint serves as."""

from __future__ import annotations

import sys

import pytest

from rayfleet.serve import metrics
from rayfleet.serve.config import ROLLOUT_SURGE_PERCENT, application_config
from rayfleet.serve.rollout import Rollout, version_of
from rayfleet.specs import parse_spec

OLD = "s3://b/runs/digits/checkpoint_e000001-aa"
NEW = "s3://b/runs/digits/checkpoint_e000000-aa/"


def rollout(**changes) -> Rollout:
    doc = {"application": "digits", "from_checkpoint": OLD, "to_checkpoint": NEW,
           "old_replicas": ["r1", "r2"], "started_s": 1.0, **changes}  # fmt: skip
    return Rollout(**doc)


def test_replicas_split_into_old_and_new_by_the_ids_noted_before_the_update():
    replicas = [
        {"replica_id": "r1", "state": "RUNNING"},
        {"replica_id": "r2", "state": "STOPPING"},
        {"replica_id": "n1", "state": "RUNNING"},
        {"replica_id": "n2", "state": "STARTING"},
        {"replica_id": "n3", "state": "STOPPED"},  # gone: not counted
    ]
    r = rollout()
    assert r.counts(replicas) == {
        "old": {"RUNNING": 1, "STOPPING": 1},
        "new": {"RUNNING": 1, "STARTING": 1},
    }
    assert r.summary(replicas) == (
        "rolling checkpoint_e000001-aa -> checkpoint_e000000-aa: old 1 running, 1 stopping; "
        "new 1 running, 1 starting"
    )
    assert r.summary([]) == (
        "rolling checkpoint_e000001-aa -> checkpoint_e000000-aa: old none; new none"
    )
    back = rollout(state="rolled back", message="checkpoint x: not found")
    assert back.summary(replicas[:1]).endswith("old 1 running; new none (checkpoint x: not found)")


def test_the_record_round_trips_and_refuses_unknown_fields():
    r = rollout()
    assert Rollout.model_validate_json(r.model_dump_json()) == r
    with pytest.raises(ValueError):
        Rollout.model_validate({**r.model_dump(), "extra": 1})


def test_version_is_the_checkpoint_folder_as_in_the_responses():
    from rayfleet.serve.loading import LoadedModel

    meta = {"recipe": "digits-cnn", "input": {"shape": [1, 8, 8], "dtype": "float32"},
            "num_classes": 10}  # fmt: skip
    model = LoadedModel("digits", NEW, meta, module=None)
    assert version_of(NEW) == model.version == "checkpoint_e000000-aa"
    assert version_of(None) is None


def test_a_checkpoint_change_rolls_with_surge_and_a_scale_change_does_not_roll():
    """Serve restarts replicas when `args` change (a new checkpoint) and rolls them with the
    surge allowance; replica counts stay outside `args`."""
    spec = parse_spec(
        {"apiVersion": "rayfleet.io/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "digits"}, "spec": {"source": {"run": "digits"}, "replicas": 2}},
        source="test",
    )  # fmt: skip
    a, b = application_config(spec, OLD), application_config(spec.with_replicas(3), OLD)
    c = application_config(spec, NEW)
    assert a["args"] == b["args"] != c["args"]
    assert a["deployments"][0]["max_surge_percent"] == ROLLOUT_SURGE_PERCENT == 100


def test_metrics_are_recorded_only_inside_ray(monkeypatch):
    import ray  # imported but not connected (the test session's own Ray may be): no metrics

    with monkeypatch.context() as m:
        m.setattr(ray, "is_initialized", lambda: False)
        assert metrics.replica_metrics("digits", "v1") is None
    with monkeypatch.context() as m:  # plain uvicorn (the benchmark baseline): no Ray at all
        m.delitem(sys.modules, "ray")
        assert metrics.replica_metrics("digits", "v1") is None
