"""ModelDeployment specs and the Serve config they become (no Ray started)."""

from pathlib import Path

import pytest
import yaml

from rayfleet.errors import SpecError
from rayfleet.specs import KINDS, json_schema, load_spec, parse_spec

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "jobs" / "digits" / "serve.yaml"


def _doc(**spec_changes):
    doc = yaml.safe_load(SERVE.read_text())
    doc["spec"].update(spec_changes)
    return doc


def test_shipped_serve_spec_loads_with_defaults():
    d = load_spec(SERVE)
    assert d.kind == "ModelDeployment" and "ModelDeployment" in KINDS
    assert d.model_name == "digits" and d.spec.source.describe() == "run digits"
    assert d.num_replicas == 1 and d.spec.batching.enabled
    assert d.spec.ongoing_limit == 64  # 2 x maxBatchSize
    assert json_schema("ModelDeployment")["properties"]["spec"]


@pytest.mark.parametrize(
    "source, fragment",
    [
        ({}, "set exactly one of checkpoint, run or sweep"),
        ({"run": "a", "sweep": "b"}, "(got run, sweep)"),
        ({"run": "Bad_Name"}, "is not a valid name"),
        ({"checkpoint": "gs://b/x"}, "scheme 'gs' is not supported"),
        ({"model": "x"}, "unknown field"),
    ],
)
def test_bad_sources_are_named(source, fragment):
    with pytest.raises(SpecError, match=r"spec\.source") as err:
        parse_spec(_doc(source=source))
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"autoscaling": {"maxReplicas": 3}}, "set replicas or autoscaling, not both"),
        ({"replicas": 0}, "greater than or equal to 1"),
        ({"replicas": None, "autoscaling": {"minReplicas": 3, "maxReplicas": 2}}, "above"),
        ({"batching": {"maxBatchSize": 0}}, "greater than or equal to 1"),
        ({"maxRequestBytes": 10}, "greater than or equal to 1024"),
        ({"routePrefix": "digits"}, "must start with '/'"),
        ({"gpusPerReplica": -1}, "greater than or equal to 0"),
        ({"replica": 2}, "spec.replica: unknown field"),
    ],
)
def test_bad_scaling_and_limits_are_named(changes, fragment):
    with pytest.raises(SpecError) as err:
        parse_spec(_doc(**changes))
    assert fragment in str(err.value)


def test_wrong_kind_for_the_command_points_at_the_right_one():
    with pytest.raises(SpecError, match="is a TrainJob, not a ModelDeployment.*rayfleet run"):
        load_spec(REPO / "jobs" / "digits" / "train.yaml", expect="ModelDeployment")
    with pytest.raises(SpecError, match="rayfleet serve"):
        load_spec(SERVE, expect="TrainJob")


def test_sweep_source_and_overrides():
    d = load_spec(SERVE, ["spec.source.run=null", "spec.source.sweep=digits-sweep"])
    assert d.spec.source.kind == "sweep" and d.spec.source.value == "digits-sweep"


# ------------------------------------------------------------------ the Serve config


def _code_version(app: dict) -> str:
    from ray.serve._private.deploy_utils import get_app_code_version
    from ray.serve.schema import ServeApplicationSchema

    return get_app_code_version(ServeApplicationSchema.model_validate(app))


def test_replica_changes_keep_the_code_version_so_serve_scales_in_place():
    from rayfleet.serve.config import DEPLOYMENT, IMPORT_PATH, application_config

    d = load_spec(SERVE)
    checkpoint = "s3://b/runs/digits/checkpoint_e000011-1"
    one = application_config(d, checkpoint=checkpoint)
    three = application_config(d.with_replicas(3), checkpoint=checkpoint)
    assert one["import_path"] == IMPORT_PATH
    assert one["deployments"] == [
        {
            "name": DEPLOYMENT,
            "num_replicas": 1,
            "max_ongoing_requests": 64,
            "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.0},
        }
    ]
    assert three["deployments"][0]["num_replicas"] == 3
    assert "replicas" not in one["args"]["spec"]["spec"]
    # Serve's own code-version hash decides between an in-place update and a rolling restart.
    assert _code_version(one) == _code_version(three)
    other = application_config(d, checkpoint="s3://b/runs/digits/checkpoint_e000012-1")
    assert _code_version(other) != _code_version(one)


def test_autoscaling_becomes_serve_autoscaling_config():
    from rayfleet.serve.config import application_config

    d = parse_spec(
        _doc(
            replicas=None,
            autoscaling={"minReplicas": 1, "maxReplicas": 4, "targetOngoingRequests": 3},
        )
    )
    assert d.num_replicas is None
    override = application_config(d)["deployments"][0]
    assert "num_replicas" not in override
    assert override["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 1,
        "target_ongoing_requests": 3.0,
    }


def test_builder_args_round_trip_to_the_same_spec():
    from rayfleet.serve.config import application_config

    d = load_spec(SERVE, ["spec.replicas=2", "spec.batching.maxBatchSize=8"])
    args = application_config(d, checkpoint="/tmp/ckpt")["args"]
    again = parse_spec(args["spec"])
    assert again.spec.batching.max_batch_size == 8
    assert again.spec.replicas is None and again.num_replicas == 1  # scaling lives outside args
    assert args["checkpoint"] == "/tmp/ckpt"
