"""The operator's reconcile logic, pure: ModelDeployment -> owned RayService (strict KubeRay
v1.7.0 schema), patches that KubeRay applies in place, and the status from KubeRay's."""

from __future__ import annotations

import copy
import difflib
from typing import Any

import jsonschema
import pytest
import yaml

from rayfleet.errors import SpecError
from rayfleet.k8s import RenderOptions, crd, read_spec_file, reconcile, render_objects
from tests.k8s import security
from tests.k8s.schemas import REPO, strict, validate, validate_ray

pytestmark = pytest.mark.k8s
NS, UID = "ml", "6c1f1c7e-0000-4000-8000-000000000001"


def md(**spec_changes: Any) -> dict[str, Any]:
    """jobs/digits/serve.yaml as the API server returns it once applied."""
    doc = yaml.safe_load((REPO / "jobs/digits/serve.yaml").read_text())
    doc["metadata"].update(namespace=NS, uid=UID, generation=1, resourceVersion="7")
    for key, value in spec_changes.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return doc


def live(obj: dict[str, Any], rv: str = "41", **status: Any) -> dict[str, Any]:
    """An object as stored: resourceVersion, generation, uid, and what KubeRay wrote."""
    out = copy.deepcopy(obj)
    out["metadata"].update(resourceVersion=rv, generation=1, uid="child-uid")
    if status:
        out["status"] = status
    return out


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


# ------------------------------------------------------------------------ desired objects


def test_desired_objects_validate_and_are_hardened():
    objects = reconcile.desired_objects(md())
    assert [o["kind"] for o in objects] == ["RayService", "NetworkPolicy", "PodDisruptionBudget"]
    for obj in objects:
        validate(obj)  # RayService: strict KubeRay v1.7.0 CRD schema; the rest: kubernetes-validate
    security.assert_auth_on(objects)
    security.assert_containers_hardened(objects)
    security.assert_no_host_access(objects)
    security.assert_network_policy(objects, serve_peers=0)
    security.assert_head_pdb(objects)
    security.assert_not_exposed(objects)


def test_desired_objects_are_rayfleet_render_plus_ownership():
    """The operator's RayService is `rayfleet render jobs/digits/serve.yaml`'s, plus a
    namespace, an owner reference and the owner labels; nothing else differs."""
    rendered = render_objects(read_spec_file(REPO / "jobs/digits/serve.yaml"), RenderOptions())
    desired = reconcile.desired_objects(md())
    assert len(rendered) == len(desired)
    for want, got in zip(rendered, desired, strict=True):
        meta = got["metadata"]
        assert meta["namespace"] == NS
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "rayfleet.io/v1alpha1",
                "kind": "ModelDeployment",
                "name": "digits",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"] == {
            **want["metadata"]["labels"],
            reconcile.OWNER_LABEL: "digits",
            "app.kubernetes.io/managed-by": reconcile.MANAGED_BY,
        }
        assert {k: v for k, v in got.items() if k != "metadata"} == {
            k: v for k, v in want.items() if k != "metadata"
        }


def test_serve_config_carries_the_replicas_or_the_autoscaling_block():
    service = reconcile.desired_ray_service(md(replicas=3))
    (app,) = reconcile.serve_config(service)["applications"]
    (server,) = app["deployments"]
    assert server["num_replicas"] == 3 and "autoscaling_config" not in server
    auto = {"minReplicas": 1, "maxReplicas": 4, "targetOngoingRequests": 3}
    service = reconcile.desired_ray_service(md(replicas=None, autoscaling=auto))
    (server,) = reconcile.serve_config(service)["applications"][0]["deployments"]
    assert "num_replicas" not in server
    assert server["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 3.0,
    }  # fmt: skip


def test_kubernetes_metadata_stays_out_of_the_serve_config():
    """Labels, uid and resourceVersion are bookkeeping: changing them must not change `args`
    (which would roll every replica)."""
    plain = reconcile.desired_ray_service(md())
    labelled = md()
    labelled["metadata"]["labels"] = {"team": "a"}
    labelled["metadata"]["annotations"] = {"note": "x"}
    labelled["metadata"]["resourceVersion"] = "999"
    assert (
        reconcile.desired_ray_service(labelled)["spec"]["serveConfigV2"]
        == plain["spec"]["serveConfigV2"]
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["spec"]["source"].update(sweep="s"), "set exactly one of checkpoint, run"),
        (
            # replicas: 1 next to autoscaling is the CRD's default (see reconcile.parse)
            lambda d: d["spec"].update(replicas=2, autoscaling={"maxReplicas": 2}),
            "set replicas or autoscaling, not both",
        ),
        (lambda d: d["spec"].update(replicaz=2), "spec.replicaz: unknown field"),
        (lambda d: d["metadata"].update(name="Digits"), "'Digits' is not a valid name"),
    ],
    ids=["two-sources", "replicas-and-autoscaling", "typo", "bad-name"],
)
def test_invalid_specs_fail_with_one_line(change, message):
    doc = md()
    change(doc)
    with pytest.raises(SpecError) as err:
        reconcile.desired_objects(doc)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"ModelDeployment {NS}/")


# ------------------------------------------------------------------------------- patches


def _cluster_after(service: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    return reconcile.apply_merge_patch(service, patch)


def test_creates_what_is_missing():
    desired = reconcile.desired_objects(md())
    actions = reconcile.plan(md(), desired, {})
    assert [(a.verb, a.kind) for a in actions] == [  # the RayService after its protections
        ("create", "NetworkPolicy"),
        ("create", "PodDisruptionBudget"),
        ("create", "RayService"),
    ]
    assert actions[2].body is desired[0]


def test_nothing_to_do_when_live_objects_match_even_with_server_defaults():
    desired = reconcile.desired_objects(md())
    existing = {}
    for obj in desired:
        stored = live(obj)
        # What the API server and KubeRay add to a stored object.
        stored["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        if obj["kind"] == "RayService":
            stored["spec"]["upgradeStrategy"] = {"type": "NewCluster"}
            head = stored["spec"]["rayClusterConfig"]["headGroupSpec"]
            head["template"]["metadata"]["annotations"] = {"ray.io/ft-enabled": "false"}
            stored["status"] = {"serviceStatus": "Running"}
        existing[(obj["kind"], obj["metadata"]["name"])] = stored
    assert reconcile.plan(md(), desired, existing) == []


def test_a_replica_change_patches_only_num_replicas_in_serve_config():
    before = reconcile.desired_objects(md(replicas=1))
    existing = {(o["kind"], o["metadata"]["name"]): live(o) for o in before}
    after = reconcile.desired_objects(md(replicas=3))
    (action,) = reconcile.plan(md(replicas=3), after, existing)
    assert (action.verb, action.kind, action.name) == ("patch", "RayService", "digits")
    # The merge patch: the new string and the resourceVersion precondition, nothing else.
    assert action.body == {
        "metadata": {"resourceVersion": "41"},
        "spec": {"serveConfigV2": after[0]["spec"]["serveConfigV2"]},
    }
    assert action.resource_version == "41"
    old_text = existing[("RayService", "digits")]["spec"]["serveConfigV2"]
    new_text = action.body["spec"]["serveConfigV2"]
    changed = [
        line
        for line in difflib.unified_diff(old_text.splitlines(), new_text.splitlines(), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert [line[0] + line[1:].strip() for line in changed] == [
        "-num_replicas: 1",
        "+num_replicas: 3",
    ]
    # Parsed: only that value differs; `args` and `import_path` (Serve's code version) are equal.
    old, new = yaml.safe_load(old_text), yaml.safe_load(new_text)
    assert new["applications"][0]["deployments"][0].pop("num_replicas") == 3
    assert old["applications"][0]["deployments"][0].pop("num_replicas") == 1
    assert old == new
    # The patched RayService is still valid, and KubeRay's cluster hash is unchanged.
    patched = _cluster_after(existing[("RayService", "digits")], action.body)
    validate_ray(patched)
    assert (
        patched["spec"]["rayClusterConfig"]
        == existing[("RayService", "digits")]["spec"]["rayClusterConfig"]
    )
    assert reconcile.muted_cluster(patched["spec"]["rayClusterConfig"]) == reconcile.muted_cluster(
        after[0]["spec"]["rayClusterConfig"]
    )


def test_a_resource_change_patches_the_cluster_config_too():
    """cpusPerReplica changes the worker pods: KubeRay must build a new cluster for it, so
    this one does reach rayClusterConfig (unlike a replica change)."""
    existing = {
        (o["kind"], o["metadata"]["name"]): live(o) for o in reconcile.desired_objects(md())
    }
    changed = md(cpusPerReplica=2)
    actions = {
        a.kind: a for a in reconcile.plan(changed, reconcile.desired_objects(changed), existing)
    }
    assert set(actions["RayService"].body["spec"]) == {"serveConfigV2", "rayClusterConfig"}
    old_rc = existing[("RayService", "digits")]["spec"]["rayClusterConfig"]
    new_rc = actions["RayService"].body["spec"]["rayClusterConfig"]
    assert reconcile.muted_cluster(old_rc) != reconcile.muted_cluster(new_rc)
    assert "NetworkPolicy" not in actions and "PodDisruptionBudget" not in actions


def test_an_unowned_object_of_the_same_name_is_a_conflict():
    desired = reconcile.desired_objects(md())
    foreign = live(desired[0])
    foreign["metadata"]["ownerReferences"] = []
    actions = reconcile.plan(md(), desired, {("RayService", "digits"): foreign})
    assert actions[0] == reconcile.Action("conflict", "RayService", "digits")


def test_missing_owner_labels_are_patched_back():
    desired = reconcile.desired_objects(md())
    stored = live(desired[1])
    del stored["metadata"]["labels"][reconcile.OWNER_LABEL]
    (action,) = reconcile.plan(md(), desired[1:2], {("NetworkPolicy", "digits"): stored})
    assert action.body == {
        "metadata": {"labels": {reconcile.OWNER_LABEL: "digits"}, "resourceVersion": "41"}
    }


@pytest.mark.parametrize(
    "old, new",
    [
        ({"a": 1, "b": {"c": 2, "d": [1, 2]}}, {"a": 1, "b": {"c": 3, "d": [1]}, "e": "x"}),
        ({"a": {"b": 1}}, {}),
        ({}, {"a": {"b": None}}),
        ({"a": 1}, {"a": 1}),
    ],
)
def test_merge_patch_round_trips(old, new):
    patch = reconcile.merge_patch(old, new)
    expected = reconcile.apply_merge_patch({}, new) if new else {}  # nulls don't survive
    assert reconcile.apply_merge_patch(old, patch or {}) == expected


# -------------------------------------------------------------------------------- status


def kuberay_status(
    app: str | None = "RUNNING", dep: str | None = "HEALTHY", ready: str = "True", **extra: Any
) -> dict[str, Any]:
    """A RayService status as KubeRay v1.7.0 writes it."""
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": ready, "reason": "NonZeroServeEndpoints" if ready == "True"
             else "Initializing", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster",
             "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ],
        "numServeEndpoints": 1,
    }  # fmt: skip
    if app is not None:
        status["activeServiceStatus"] = {
            "rayClusterName": "digits-abcde",
            "applicationStatuses": {
                "digits": {
                    "status": app,
                    "serveDeploymentStatuses": {"ModelServer": {"status": dep}},
                }
            },
        }
    status.update(extra)
    return status


def status_validator() -> jsonschema.protocols.Validator:
    (version,) = crd.crd()["spec"]["versions"]
    return jsonschema.Draft4Validator(
        strict(version["schema"]["openAPIV3Schema"]["properties"]["status"])
    )


def cond(status: dict[str, Any], type_: str) -> tuple[str, str]:
    c = next(c for c in status["conditions"] if c["type"] == type_)
    return c["status"], c["reason"]


def test_status_when_serving_at_target():
    obj = md(replicas=3)
    service = live(reconcile.desired_ray_service(obj), **kuberay_status())
    status = reconcile.status(obj, service)
    status_validator().validate(status)
    assert status["replicas"] == status["readyReplicas"] == 3
    assert status["observedGeneration"] == 1
    assert status["selector"] == "rayfleet.io/cluster=digits,ray.io/node-type=worker"
    assert status["serveStatus"] == "RUNNING"
    assert cond(status, "Ready") == ("True", "Serving")
    assert cond(status, "Scaling") == ("False", "AtTarget")


def test_status_while_kubernetes_has_not_applied_the_new_spec():
    obj = md(replicas=3)
    obj["status"] = {"replicas": 1, "readyReplicas": 1}
    service = live(reconcile.desired_ray_service(obj), **kuberay_status())
    service["metadata"]["generation"] = 2  # our patch; KubeRay observed 1
    status = reconcile.status(obj, service)
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    assert cond(status, "Scaling") == ("True", "ConfigPending")


def test_status_while_serve_upscales():
    obj = md(replicas=3)
    obj["status"] = {"replicas": 1, "readyReplicas": 1}
    service = live(reconcile.desired_ray_service(obj), **kuberay_status(dep="UPSCALING"))
    status = reconcile.status(obj, service)
    assert (status["replicas"], status["readyReplicas"]) == (3, 1)
    assert cond(status, "Scaling") == ("True", "Upscaling")
    assert cond(status, "Ready") == ("True", "Serving")


def test_status_while_downscaling_caps_ready_at_the_target():
    obj = md(replicas=1)
    obj["status"] = {"replicas": 3, "readyReplicas": 3}
    service = live(reconcile.desired_ray_service(obj), **kuberay_status(dep="DOWNSCALING"))
    status = reconcile.status(obj, service)
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    assert cond(status, "Scaling") == ("True", "Downscaling")


def test_status_before_kuberay_has_a_cluster():
    obj = md()
    service = live(reconcile.desired_ray_service(obj), **kuberay_status(app=None, ready="False"))
    status = reconcile.status(obj, service)
    assert cond(status, "Ready") == ("False", "Initializing")
    assert status["readyReplicas"] == 0
    assert reconcile.status(obj, None)["conditions"][0]["reason"] == "Creating"


def test_status_under_autoscaling_reports_no_counts():
    obj = md(replicas=None, autoscaling={"minReplicas": 1, "maxReplicas": 3})
    service = live(reconcile.desired_ray_service(obj), **kuberay_status())
    status = reconcile.status(obj, service)
    assert "replicas" not in status and "readyReplicas" not in status
    assert cond(status, "Scaling") == ("False", "AtTarget")


def test_status_for_an_invalid_spec_keeps_the_last_counts():
    obj = md()
    obj["status"] = {"replicas": 2, "readyReplicas": 2}
    status = reconcile.status(obj, None, error="spec: bad", reason="InvalidSpec")
    status_validator().validate(status)
    assert (status["replicas"], status["readyReplicas"]) == (2, 2)
    assert status["conditions"][0]["message"] == "spec: bad"
    assert cond(status, "Ready") == ("False", "InvalidSpec")


def test_unchanged_status_is_not_rewritten_and_transition_times_hold():
    obj = md()
    service = live(reconcile.desired_ray_service(obj), **kuberay_status())
    first = reconcile.status(obj, service)
    obj["status"] = first
    assert reconcile.status_patch(obj, reconcile.status(obj, service)) is None
    upscaling = live(reconcile.desired_ray_service(obj), **kuberay_status(dep="UPSCALING"))
    second = reconcile.status(obj, upscaling)
    patch = reconcile.status_patch(obj, second)
    assert patch is not None
    ready_before = next(c for c in first["conditions"] if c["type"] == "Ready")
    ready_after = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert ready_after["lastTransitionTime"] == ready_before["lastTransitionTime"]
