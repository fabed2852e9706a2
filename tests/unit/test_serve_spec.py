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
            "max_surge_percent": 100,  # a rollout starts new replicas before old ones stop
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


def _ray_containers(ray_service: dict) -> list[dict]:
    cluster = ray_service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("ingress, value", [(None, "1"), ("haproxy", "1"), ("serve-proxy", None)])
def test_ingress_switch_reaches_every_ray_container_and_not_the_replicas_args(ingress, value):
    """Serve reads RAY_SERVE_ENABLE_HA_PROXY at import on every node, so the RayService that
    `rayfleet render` and the operator build (one function) sets it on every Ray container;
    it stays out of the Serve config's args (switching it must not roll replicas)."""
    from rayfleet.k8s import reconcile

    doc = _doc(**({"ingress": ingress} if ingress else {}))
    doc["metadata"].update(namespace="ml", uid="u1", generation=1)
    service = reconcile.desired_ray_service(doc)
    containers = _ray_containers(service)
    assert len(containers) >= 2  # head and worker
    for c in containers:
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == value, c["name"]
    args_spec = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert "ingress" not in args_spec["spec"]["spec"]
    assert load_spec(SERVE).spec.ingress == "haproxy"  # the default


def test_local_ingress_env_gives_each_instance_its_own_haproxy_ports():
    from rayfleet.serve.ingress import local_env

    ports = iter(range(21001, 21010))
    one = local_env("haproxy", free_port=lambda: next(ports))
    two = local_env("haproxy", free_port=lambda: next(ports))
    assert one["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    keys = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")
    assert len({one[k] for k in keys} | {two[k] for k in keys}) == 4
    assert local_env("serve-proxy", free_port=lambda: 0) == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}
    with pytest.raises(SpecError, match="ingress"):
        parse_spec(_doc(ingress="nginx"))
