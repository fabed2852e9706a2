"""RayJob lifecycle: KubeRay 1.7 deletion rules (a succeeded job's cluster goes at once, a failed
one's is kept for debugging), retries that resume, and the deadline from the spec."""

from __future__ import annotations

import shlex

import pytest

from rayfleet.cli.sweep_commands import start
from rayfleet.k8s import RenderOptions, read_spec_file, render_objects
from tests.k8s.schemas import REPO, validate

pytestmark = pytest.mark.k8s


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def rayjob(path="jobs/digits/train.yaml", overrides=(), **options) -> dict:
    objects = render_objects(read_spec_file(path, tuple(overrides)), RenderOptions(**options))
    for obj in objects:
        validate(obj)
    return next(o for o in objects if o["kind"] == "RayJob")["spec"]


def rules(spec: dict) -> dict[tuple[str, str], int]:
    return {
        (r["policy"], r["condition"].get("jobStatus") or r["condition"]["jobDeploymentStatus"]): r[
            "condition"
        ]["ttlSeconds"]
        for r in spec["deletionStrategy"]["deletionRules"]
    }


def test_deletion_rules_keep_a_failed_cluster_and_drop_a_succeeded_one():
    spec = rayjob()
    # KubeRay 1.7 refuses rules together with shutdownAfterJobFinishes or a global TTL.
    assert spec["shutdownAfterJobFinishes"] is False
    assert "ttlSecondsAfterFinished" not in spec
    assert rules(spec) == {
        ("DeleteCluster", "SUCCEEDED"): 0,
        ("DeleteSelf", "SUCCEEDED"): 3600,
        ("DeleteCluster", "FAILED"): 1800,
        ("DeleteSelf", "FAILED"): 3600,
        ("DeleteCluster", "Failed"): 1800,
        ("DeleteSelf", "Failed"): 3600,
    }


def test_spec_lifecycle_wins_over_the_flags_and_ttls_stay_ordered():
    spec = rayjob(
        overrides=(
            "spec.lifecycle.keepFailedClusterSeconds=7200",
            "spec.lifecycle.backoffLimit=3",
            "spec.lifecycle.activeDeadlineSeconds=600",
        ),
        ttl_seconds_after_finished=60,
        backoff_limit=0,
    )
    assert spec["backoffLimit"] == 3
    assert spec["activeDeadlineSeconds"] == 600
    got = rules(spec)
    # KubeRay: per condition, DeleteCluster's TTL <= DeleteSelf's.
    assert got[("DeleteCluster", "FAILED")] == 7200 <= got[("DeleteSelf", "FAILED")]
    assert got[("DeleteSelf", "SUCCEEDED")] == 60
    assert (
        rayjob(overrides=("spec.lifecycle.backoffLimit=0",), backoff_limit=2)["backoffLimit"] == 0
    )


def test_a_retried_sweep_resumes_instead_of_already_exists():
    """Every attempt of a RayJob runs the same entrypoint; the sweep's must continue the
    trials.json an earlier attempt left (plain `rayfleet sweep` refuses: "already exists")."""
    args = shlex.split(rayjob("jobs/digits/sweep.yaml")["entrypoint"])
    assert args[:3] == ["rayfleet", "sweep", "/etc/rayfleet/job/sweep.yaml"]
    assert "--resume-if-exists" in args
    import inspect

    assert "resume_if_exists" in inspect.signature(start).parameters


def test_a_retried_trainjob_resumes_by_run_name():
    """`rayfleet run` resumes the run name's newest verified checkpoint on every launch, so a
    retried RayJob's identical entrypoint continues training instead of starting over."""
    args = shlex.split(rayjob()["entrypoint"])
    assert args == ["rayfleet", "run", "/etc/rayfleet/job/train.yaml"]


def test_bad_lifecycle_fails_on_validate():
    from rayfleet.errors import SpecError

    with pytest.raises(SpecError, match="activeDeadlineSeconds"):
        read_spec_file("jobs/digits/train.yaml", ("spec.lifecycle.activeDeadlineSeconds=0",))


def test_chart_gcs_fault_tolerance_with_external_redis():
    from tests.k8s.conftest import chart_objects, render_chart

    ft = {"enabled": True, "redisAddress": "redis.ft:6380", "existingSecret": "redis-pw"}
    objects = chart_objects(render_chart({"rayCluster": {"gcsFaultTolerance": ft}}))
    for obj in objects:
        validate(obj)
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    assert cluster["spec"]["gcsFaultToleranceOptions"] == {
        "backend": "redis",
        "redisAddress": "redis.ft:6380",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-pw", "key": "auth"}}},
    }
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])]
    assert 6380 in ports
    off = chart_objects(render_chart())
    assert (
        "gcsFaultToleranceOptions" not in next(o for o in off if o["kind"] == "RayCluster")["spec"]
    )


def test_chart_gcs_fault_tolerance_on_an_embedded_volume():
    from tests.k8s.conftest import chart_objects, render_chart

    ft = {"enabled": True, "backend": "rocksdb", "storage": {"size": "2Gi", "retain": True}}
    objects = chart_objects(render_chart({"rayCluster": {"gcsFaultTolerance": ft}}))
    for obj in objects:
        validate(obj)
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    assert cluster["spec"]["gcsFaultToleranceOptions"] == {
        "backend": "rocksdb",
        "storage": {"size": "2Gi", "deletionPolicy": "Retain"},
    }
    own = {"enabled": True, "backend": "rocksdb", "storage": {"claimName": "gcs-state"}}
    objects = chart_objects(render_chart({"rayCluster": {"gcsFaultTolerance": own}}))
    cluster = next(o for o in objects if o["kind"] == "RayCluster")
    validate(cluster)
    assert cluster["spec"]["gcsFaultToleranceOptions"]["storage"] == {"claimName": "gcs-state"}


def test_chart_refuses_a_redis_address_with_the_embedded_backend():
    from tests.k8s.conftest import render_chart

    ft = {"enabled": True, "backend": "rocksdb", "redisAddress": "redis.ft:6379"}
    with pytest.raises(Exception, match="redisAddress is for backend redis"):
        render_chart({"rayCluster": {"gcsFaultTolerance": ft}})


def _served(*overrides: str) -> list[dict]:
    objects = render_objects(read_spec_file("jobs/digits/serve.yaml", overrides), RenderOptions())
    for obj in objects:
        validate(obj)
    return objects


def _egress_ports(objects: list[dict]) -> list[int]:
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    return [p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])]


def test_model_deployment_gcs_fault_tolerance_on_redis_renders_a_valid_rayservice():
    objects = _served(
        "spec.gcsFaultTolerance.backend=redis",
        "spec.gcsFaultTolerance.redis.address=redis.ray-ft.svc:6380",
        "spec.gcsFaultTolerance.redis.passwordSecret.name=redis-auth",
        "spec.gcsFaultTolerance.redis.namespace=digits",
    )
    service = next(o for o in objects if o["kind"] == "RayService")
    assert service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"] == {
        "backend": "redis",
        "redisAddress": "redis.ray-ft.svc:6380",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
        "externalStorageNamespace": "digits",
    }
    assert 6380 in _egress_ports(objects)  # the head reaches its Redis through the policy
    assert 6380 not in _egress_ports(_served())


def test_model_deployment_gcs_fault_tolerance_on_an_embedded_volume():
    objects = _served(
        "spec.gcsFaultTolerance.backend=rocksdb",
        "spec.gcsFaultTolerance.storage.size=4Gi",
        "spec.gcsFaultTolerance.storage.storageClassName=fast-ssd",
    )
    service = next(o for o in objects if o["kind"] == "RayService")
    assert service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"] == {
        "backend": "rocksdb",
        "storage": {
            "size": "4Gi",
            "deletionPolicy": "DeleteWithCluster",
            "storageClassName": "fast-ssd",
        },
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("spec.gcsFaultTolerance.backend=redis",), "backend redis needs redis.address"),
        (
            ("spec.gcsFaultTolerance.backend=redis", "spec.gcsFaultTolerance.redis.address=redis"),
            "is not host:port",
        ),
        (
            ("spec.gcsFaultTolerance.backend=rocksdb", "spec.gcsFaultTolerance.redis.address=r:1"),
            "redis is for backend redis",
        ),
        (
            ("spec.gcsFaultTolerance.backend=rocksdb", "spec.gcsFaultTolerance.storage.size=lots"),
            "is not a quantity",
        ),
        (
            (
                "spec.gcsFaultTolerance.backend=rocksdb",
                "spec.gcsFaultTolerance.storage.claimName=mine",
                "spec.gcsFaultTolerance.storage.retain=true",
            ),
            "set one or the other",
        ),
    ],
)
def test_bad_gcs_fault_tolerance_fails_on_validate(overrides, message):
    from rayfleet.errors import SpecError

    with pytest.raises(SpecError, match=message):
        read_spec_file("jobs/digits/serve.yaml", overrides)
