"""`kubectl rayfleet`: the serveConfigV2 edit is a pure function checked against the strict
KubeRay RayService schema and a YAML round trip; the commands run against an in-memory API."""

from __future__ import annotations

import copy

import pytest
import yaml
from typer.testing import CliRunner

from rayfleet.k8s import plugin, reconcile
from rayfleet.k8s.serveconfig import ServeConfigError, set_replicas, targets
from tests.k8s.fake_api import FakeCluster
from tests.k8s.objects import load_docs
from tests.k8s.schemas import REPO, validate_ray

pytestmark = pytest.mark.k8s
OVERLAY = REPO / "manifests" / "overlays" / "digits-serve" / "rayservice.yaml"

# A hand-written RayService config, the way people write them: comments, two applications,
# flow-style args, a deployment without num_replicas, one with autoscaling.
HAND_WRITTEN = """\
# Two models on one cluster.
applications:
  - name: fraud          # the scoring model
    route_prefix: /fraud
    import_path: models.fraud:app
    runtime_env:
      pip: [xgboost==2.1.0]
    args: {threshold: 0.7, features: [a, b, "c d"]}
    deployments:
      - name: Scorer
        num_replicas: 2   # keep two for HA
        ray_actor_options: {num_cpus: 0.5}
      - name: Featurizer
        max_ongoing_requests: 16
  - name: chat
    route_prefix: /chat
    import_path: models.chat:app
    deployments:
      - name: LLM
        autoscaling_config:
          min_replicas: 1
          max_replicas: 4
"""


def overlay_service() -> dict:
    """The digits RayService from manifests/ (applied with kubectl, no operator), as stored."""
    (service,) = [o for o in load_docs(OVERLAY.read_text()) if o["kind"] == "RayService"]
    service["metadata"].update(namespace="ml", resourceVersion="812", generation=1)
    return service


def service_with(config: str) -> dict:
    service = overlay_service()
    service["spec"]["serveConfigV2"] = config
    return service


def only_num_replicas_changed(old: str, new: str, app: int, dep: int, value: int) -> None:
    a, b = yaml.safe_load(old), yaml.safe_load(new)
    assert b["applications"][app]["deployments"][dep].pop("num_replicas") == value
    a["applications"][app]["deployments"][dep].pop("num_replicas", None)
    assert a == b


# ------------------------------------------------------------------------------ the patch


def test_scale_patch_of_a_rayservice_validates_and_changes_nothing_else():
    service = overlay_service()
    patch, before = plugin.scale_patch(service, 3)
    assert before.replicas == 1 and (before.app, before.deployment) == ("digits", "ModelServer")
    assert set(patch) == {"metadata", "spec"}
    assert patch["metadata"] == {"resourceVersion": "812"}  # optimistic lock
    assert set(patch["spec"]) == {"serveConfigV2"}
    patched = reconcile.apply_merge_patch(service, patch)
    validate_ray(patched)  # the strict KubeRay v1.7.0 schema
    old_text = service["spec"]["serveConfigV2"]
    new_text = patched["spec"]["serveConfigV2"]
    only_num_replicas_changed(old_text, new_text, 0, 0, 3)
    assert new_text == old_text.replace("num_replicas: 1", "num_replicas: 3")
    rest = copy.deepcopy(patched)
    rest["spec"]["serveConfigV2"] = old_text
    assert rest == service  # every other field of the RayService as it was


def test_hand_written_config_keeps_comments_and_fields():
    service = service_with(HAND_WRITTEN)
    patch, before = plugin.scale_patch(service, 5, app_name="fraud", deployment="Scorer")
    new = patch["spec"]["serveConfigV2"]
    assert before.replicas == 2
    assert new == HAND_WRITTEN.replace("num_replicas: 2   # keep", "num_replicas: 5   # keep")
    only_num_replicas_changed(HAND_WRITTEN, new, 0, 0, 5)
    validate_ray(reconcile.apply_merge_patch(service, patch))


def test_a_deployment_without_num_replicas_gets_one_line():
    new, before = set_replicas(HAND_WRITTEN, 3, app="fraud", deployment="Featurizer")
    assert before.replicas is None and before.describe() == "1"
    only_num_replicas_changed(HAND_WRITTEN, new, 0, 1, 3)
    assert (
        "      - name: Featurizer\n        num_replicas: 3\n        max_ongoing_requests: 16\n"
        in new
    )
    assert "# the scoring model" in new and "# keep two for HA" in new


def test_flow_style_deployments_fall_back_to_a_full_dump():
    text = (
        "applications:\n- name: a\n  import_path: m:app\n"
        "  deployments: [{name: D, num_replicas: 1}]\n"
    )
    new, _ = set_replicas(text, 2)
    assert yaml.safe_load(new) == {
        "applications": [
            {"name": "a", "import_path": "m:app", "deployments": [{"name": "D", "num_replicas": 2}]}
        ]
    }


def test_targets_lists_every_deployment():
    assert [(t.app, t.deployment, t.describe()) for t in targets(HAND_WRITTEN)] == [
        ("fraud", "Scorer", "2"),
        ("fraud", "Featurizer", "1"),
        ("chat", "LLM", "1-4 (autoscaling)"),
    ]


@pytest.mark.parametrize(
    "config, kwargs, message",
    [
        (HAND_WRITTEN, {}, "has 2 applications (fraud, chat); pick one with --app"),
        (HAND_WRITTEN, {"app_name": "fraud"}, "(Scorer, Featurizer); pick one with --deployment"),
        (HAND_WRITTEN, {"app_name": "nope"}, "no application 'nope'; it has fraud, chat"),
        (HAND_WRITTEN, {"app_name": "chat"}, "chat/LLM uses autoscaling_config (1-4"),
        ("applications: [{name: a, import_path: 'm:app'}]", {}, "lists no deployments"),
        ("applications: {a: 1}", {}, "has no `applications` list"),
        ("applications: [", {}, "is not valid YAML (line 1)"),
        ("", {}, "is empty"),
    ],
    ids=["two-apps", "two-deployments", "unknown-app", "autoscaling", "no-deployments",
         "not-a-list", "bad-yaml", "empty"],
)  # fmt: skip
def test_scale_refuses_with_one_line(config, kwargs, message):
    with pytest.raises(ServeConfigError) as err:
        plugin.scale_patch(service_with(config), 2, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("RayService ml/digits serveConfigV2")


def test_a_rayservice_owned_by_a_model_deployment_is_refused():
    service = overlay_service()
    service["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "rayfleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "digits",
            "uid": "u",
        }
    ]
    with pytest.raises(
        plugin.OwnedError, match="kubectl scale modeldeployment/digits --replicas 4"
    ):
        plugin.scale_patch(service, 4)


def test_the_same_count_is_no_patch():
    assert plugin.scale_patch(overlay_service(), 1)[0] is None


# ---------------------------------------------------------------------------- the commands


@pytest.fixture
def api(monkeypatch) -> FakeCluster:
    fake = FakeCluster("ml")
    monkeypatch.setattr(plugin, "_cluster", lambda context: fake)
    return fake


def run(*args: str):
    return CliRunner().invoke(plugin.app, list(args))


def test_scale_command_patches_with_the_resource_version(api):
    stored = api.put(overlay_service())
    result = run("scale", "digits", "--replicas", "3")
    assert result.exit_code == 0, result.output
    assert "rayservice/digits scaled: digits/ModelServer 1 -> 3" in result.output
    (write,) = api.writes()
    assert write[:3] == ("patch", "RayService", "digits")
    assert write[3]["metadata"] == {"resourceVersion": stored["metadata"]["resourceVersion"]}
    now = api.get("RayService", "ml", "digits")
    assert [t.replicas for t in targets(now["spec"]["serveConfigV2"])] == [3]
    again = run("scale", "digits", "--replicas", "3")
    assert "already has 3 replica(s)" in again.output and len(api.writes()) == 1


def test_a_concurrent_edit_is_refused_not_overwritten(api):
    stored = api.put(overlay_service())
    patch, _ = plugin.scale_patch(stored, 2)
    api.patch("RayService", "ml", "digits", {"metadata": {"labels": {"x": "y"}}})  # someone else
    from rayfleet.k8s.client import ConflictError

    with pytest.raises(ConflictError):
        api.patch("RayService", "ml", "digits", patch)


@pytest.mark.parametrize(
    "args, message",
    [
        (["scale", "nope", "--replicas", "2"], "RayService ml/nope not found"),
        (["scale", "owned", "--replicas", "2"], "is managed by ModelDeployment digits"),
        (["scale", "digits", "--replicas", "0"], "greater than or equal to 1"),
    ],
    ids=["missing", "owned", "zero"],
)
def test_scale_errors_are_one_line_exit_2(api, args, message):
    api.put(overlay_service())
    owned = overlay_service()
    owned["metadata"]["name"] = "owned"
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "rayfleet.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "digits",
            "uid": "u",
        }
    ]
    api.put(owned)
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert api.writes() == []


def test_status_lists_model_deployments_and_rayservices(api):
    md = yaml.safe_load((REPO / "jobs/digits/serve.yaml").read_text())
    md["status"] = {
        "readyReplicas": 1,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Serving", "message": ""},
            {"type": "Scaling", "status": "True", "reason": "Upscaling", "message": ""},
        ],
    }
    md["spec"]["replicas"] = 3
    api.put(md)
    service = overlay_service()
    service["status"] = {
        "conditions": [{"type": "Ready", "status": "True"}],
        "activeServiceStatus": {"applicationStatuses": {"digits": {"status": "RUNNING"}}},
    }
    api.put(service)
    rows = plugin.status_rows(api.list("ModelDeployment", "ml"), api.list("RayService", "ml"))
    assert rows == [
        plugin.Row("ml", "ModelDeployment", "digits", "3", "1", "Serving", "Upscaling"),
        plugin.Row(
            "ml", "RayService", "digits", "digits/ModelServer=1", "True", "digits=RUNNING", ""
        ),
    ]
    result = run("status")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["ModelDeployment", "digits", "3", "1", "Serving", "Upscaling"] in lines
    assert ["RayService", "digits", "digits/ModelServer=1", "True", "digits=RUNNING"] in lines


def test_status_shows_kueue_admission_of_queued_rayjobs_and_serving_usage(api):
    """A queued RayJob (rendered by rayfleet with a queue) waits with Kueue's reason; once
    Kueue admits it, the ClusterQueue; a ModelDeployment shows its replica-hours to date."""
    from rayfleet.k8s import RenderOptions, read_spec_file, render_objects

    objects = render_objects(
        read_spec_file("jobs/digits/train.yaml", ("spec.scheduling.queue=team-a",)),
        RenderOptions(),
    )
    job = next(o for o in objects if o["kind"] == "RayJob")
    job["metadata"]["namespace"] = "ml"
    api.put(job)
    uid = api.list("RayJob", "ml")[0]["metadata"]["uid"]
    workload = {
        "kind": "Workload",
        "metadata": {"name": "rayjob-digits", "ownerReferences": [{"kind": "RayJob", "uid": uid}]},
        "status": {
            "conditions": [
                {
                    "type": "QuotaReserved",
                    "status": "False",
                    "reason": "Pending",
                    "message": "couldn't assign flavors to pod set workers: insufficient "
                    "unused quota for cpu in flavor cpu-nodes, 2 more needed",
                }
            ]
        },
    }
    api.put(workload)
    md = yaml.safe_load((REPO / "jobs/digits/serve.yaml").read_text())
    md["status"] = {
        "readyReplicas": 2,
        "usage": {
            "name": "digits",
            "cpusPerReplica": 1,
            "samples": [{"at": 1000.0, "replicas": 2}],
        },
    }
    api.put(md)

    rows = plugin.status_rows(
        api.list("ModelDeployment", "ml"), [], api.list("RayJob", "ml"),
        api.list("Workload", "ml"), now=1000.0 + 5400,
    )  # fmt: skip
    by_kind = {r.kind: r for r in rows}
    assert by_kind["ModelDeployment"].usage == "3.00 replica-h"  # 2 replicas for 1.5 h
    queued = by_kind["RayJob"]
    assert queued.note == "suspended"
    assert queued.queue.startswith("waiting: couldn't assign flavors to pod set workers")

    result = run("status")
    assert result.exit_code == 0, result.output
    assert "QUEUE" in result.output and "USAGE" in result.output
    assert "insufficient" in result.output

    workload["status"] = {
        "admission": {"clusterQueue": "team-a-cq"},
        "conditions": [{"type": "Admitted", "status": "True", "reason": "Admitted"}],
    }
    api.put(workload)
    (row,) = plugin.status_rows([], [], api.list("RayJob", "ml"), api.list("Workload", "ml"))
    assert row.queue == "admitted: team-a -> team-a-cq"


# ----------------------------------------------------- --kube-context: one name, one meaning


def test_kube_context_names_a_kubeconfig_context(monkeypatch):
    """`--kube-context` (as helm names it) is a kubeconfig context; `--context` is Ray's in
    `rayfleet`, so here it is only a hidden, deprecated alias."""
    seen: list[str | None] = []
    fake = FakeCluster("ml")
    fake.put(overlay_service())

    def cluster(kube_context):
        seen.append(kube_context)
        return fake

    monkeypatch.setattr(plugin, "_cluster", cluster)
    assert run("status", "--kube-context", "prod").exit_code == 0
    old = run("scale", "digits", "--replicas", "2", "--context", "staging")
    assert old.exit_code == 0, old.output
    assert "--context is deprecated here; use --kube-context" in old.output
    assert seen == ["prod", "staging"]
    for command in ("status", "scale"):
        help_text = run(command, "--help").output
        assert "--kube-context" in help_text and "--context " not in help_text
