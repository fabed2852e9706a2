"""A ModelDeployment whose model source changes: the operator's patch is a Serve config update
of the RayService (only the application's source moves), and the status follows the rollout
through KubeRay v1.7.0's RayService status to `kubectl rayfleet status`. Pure functions."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from rayfleet.k8s import plugin, reconcile
from tests.k8s.test_reconcile import kuberay_status, live, md, status_validator

pytestmark = pytest.mark.k8s
NEW = "s3://models/runs/digits/checkpoint_e000003-9f"


def app_args(service: dict[str, Any]) -> dict[str, Any]:
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    return app


def with_source(obj: dict[str, Any], source: dict[str, str], generation: int = 2) -> dict:
    out = copy.deepcopy(obj)
    out["spec"]["source"] = source
    out["metadata"]["generation"] = generation
    return out


def test_a_source_change_is_a_serve_config_update_that_moves_only_the_source():
    before = md()
    running = live(reconcile.desired_ray_service(before), **kuberay_status())
    after = with_source(before, {"checkpoint": NEW})
    patch = reconcile.object_patch(running, reconcile.desired_ray_service(after))
    assert patch is not None and set(patch["spec"]) == {"serveConfigV2"}  # no new cluster
    old, new = app_args(running), app_args({"spec": patch["spec"]})
    assert new["args"]["spec"]["spec"]["source"] == {"checkpoint": NEW}
    old["args"]["spec"]["spec"]["source"] = {"checkpoint": NEW}
    assert new == old  # the same application otherwise: same replicas, same surge
    assert new["deployments"][0]["max_surge_percent"] == 100  # new replicas before old stop


def _status(obj, service) -> dict[str, Any]:
    status = reconcile.status(obj, service)
    status_validator().validate(status)
    obj["status"] = status
    return status


def test_status_follows_a_rollout_to_complete():
    obj = md()
    running = live(reconcile.desired_ray_service(obj), **kuberay_status())
    assert _status(obj, running)["servedSource"] == "run digits"
    assert "rollout" not in obj["status"]

    obj = with_source(obj, {"checkpoint": NEW})
    pending = copy.deepcopy(running)
    pending["metadata"]["generation"] = 2  # our patch; KubeRay has not observed it yet
    pending["spec"] = reconcile.desired_ray_service(obj)["spec"]
    status = _status(obj, pending)
    assert status["servedSource"] == "run digits"
    assert status["rollout"] == {
        "from": "run digits", "to": f"checkpoint {NEW}", "state": "InProgress",
        "message": "waiting for KubeRay to apply the new Serve config",
    }  # fmt: skip

    rolling = copy.deepcopy(pending)
    rolling["status"] = kuberay_status(dep="UPDATING", observedGeneration=2)
    status = _status(obj, rolling)
    assert status["rollout"]["state"] == "InProgress"
    assert "UPDATING: new replicas load and verify" in status["rollout"]["message"]
    (row,) = plugin.status_rows([obj], [])
    assert row.note == f"rollout InProgress: run digits -> checkpoint {NEW}"

    done = copy.deepcopy(pending)
    done["status"] = kuberay_status(observedGeneration=2)
    status = _status(obj, done)
    assert status["servedSource"] == f"checkpoint {NEW}"
    assert status["rollout"]["state"] == "Complete"
    assert status["rollout"]["message"] == f"serving checkpoint {NEW}"
    (row,) = plugin.status_rows([obj], [])
    assert "rollout" not in row.note
    assert _status(obj, done)["rollout"]["state"] == "Complete"  # and it stays so


def test_a_failed_rollout_says_why_and_that_the_old_model_serves():
    obj = md()
    running = live(reconcile.desired_ray_service(obj), **kuberay_status())
    _status(obj, running)
    obj = with_source(obj, {"checkpoint": NEW})
    failed = live(reconcile.desired_ray_service(obj))
    failed["metadata"]["generation"] = 2
    failed["status"] = kuberay_status(app="DEPLOY_FAILED", dep="UNHEALTHY", observedGeneration=2)
    dep = failed["status"]["activeServiceStatus"]["applicationStatuses"]["digits"]
    dep["serveDeploymentStatuses"]["ModelServer"]["message"] = (
        "Traceback (most recent call last):\n  ...\nrayfleet.serve.loading.ModelLoadError: "
        f"checkpoint {NEW}: not found"
    )
    status = _status(obj, failed)
    assert status["servedSource"] == "run digits"
    assert status["rollout"]["state"] == "Failed"
    assert status["rollout"]["message"] == (
        f"rayfleet.serve.loading.ModelLoadError: checkpoint {NEW}: not found; the old replicas "
        "keep serving run digits: fix or revert the source"
    )
    (row,) = plugin.status_rows([obj], [])
    assert row.note.startswith(f"rollout Failed: run digits -> checkpoint {NEW} (")


def test_an_invalid_spec_keeps_the_rollout_it_knew():
    obj = md()
    obj["status"] = {"servedSource": "run digits", "rollout": {"from": "run a", "to": "run digits",
                     "state": "Complete", "message": "serving run digits"}}  # fmt: skip
    status = reconcile.status(obj, None, error="spec.source: bad", reason="InvalidSpec")
    assert status["servedSource"] == "run digits" and status["rollout"]["state"] == "Complete"


@pytest.mark.parametrize(
    ("source", "text"),
    [({"run": "a"}, "run a"), ({"sweep": "s"}, "sweep s"),
     ({"checkpoint": NEW}, f"checkpoint {NEW}"), ({}, None)],
)  # fmt: skip
def test_source_text(source, text):
    assert reconcile.source_text(source) == text
