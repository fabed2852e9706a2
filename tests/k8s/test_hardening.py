"""Issue 12 hardening, asserted on what reaches the API server from every path that writes a
Ray pod: the chart (every ci/ profile, its serving through the operator included),
`rayfleet render` (every shipped spec) and the operator's RayService.

- No Ray container gets a Kubernetes API token; the autoscaler sidecar alone mounts one.
- Every container runs with a read-only root filesystem and writable emptyDirs where Ray
  writes (/tmp, /tmp/ray, HOME).
- The chart's NOTES say that Serve's port is unauthenticated.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from rayfleet.k8s import RENDERERS, pods, read_spec_file, reconcile, render_objects
from tests.k8s import security
from tests.k8s.conftest import installed_objects, render_chart
from tests.k8s.objects import by_kind, cluster_specs
from tests.k8s.schemas import REPO, validate

pytestmark = [pytest.mark.k8s, pytest.mark.security]


def rendered_specs() -> dict[str, list[dict[str, Any]]]:
    """`rayfleet render` of every shipped spec it renders."""
    out = {}
    for path in sorted((REPO / "jobs").rglob("*.yaml")):
        rel = path.relative_to(REPO)
        src = read_spec_file(rel)
        if src.spec.kind in RENDERERS:
            out[str(rel)] = render_objects(src)
    return out


def operator_objects() -> list[dict[str, Any]]:
    """What the operator creates for the shipped ModelDeployment."""
    doc = yaml.safe_load((REPO / "jobs/digits/serve.yaml").read_text())
    doc["metadata"] |= {"namespace": "ml", "uid": "u-1", "generation": 1}
    return reconcile.desired_objects(doc)


def every_output(profile_objects) -> dict[str, list[dict[str, Any]]]:
    out = {f"chart {name}": objects for name, objects in profile_objects.items()}
    out |= {f"render {path}": objects for path, objects in rendered_specs().items()}
    out["operator jobs/digits/serve.yaml"] = operator_objects()
    return out


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


SERVING = {"serve": {"enabled": True, "source": {"run": "d"}}, "operator": {"enabled": True}}


# ------------------------------------------------------------------- item 5: API tokens


def test_no_ray_container_gets_an_api_token(profile_objects):
    autoscalers = {
        where: security.assert_no_api_token_in_ray_containers(objects)
        for where, objects in every_output(profile_objects).items()
    }
    # The chart's default (autoscaling on) runs the sidecar; render and the operator never do.
    assert autoscalers["chart default"] >= 1
    assert {n for w, n in autoscalers.items() if not w.startswith("chart")} == {0}


def test_only_the_autoscaler_mounts_the_token_and_kuberay_can_build_it(profile_objects):
    """autoscalerOptions.volumeMounts (KubeRay v1.7.0 appends them to the sidecar it injects)
    name volumes of the head pod, and the Ray container mounts none of the token's."""
    (cluster,) = by_kind(profile_objects["default"], "RayCluster")
    spec = cluster["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]
    names = {v["name"] for v in head["volumes"]}
    mounts = spec["autoscalerOptions"]["volumeMounts"]
    assert {m["name"] for m in mounts} <= names
    (api,) = [m for m in mounts if m["mountPath"] == security.API_TOKEN_PATH]
    assert api["name"] not in {m["name"] for m in head["containers"][0]["volumeMounts"]}
    # The sidecar shares the Ray container's /tmp/ray (KubeRay then adds no ray-logs volume,
    # and the autoscaler's events reach the head's logs).
    ray_tmp = next(m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp/ray")
    assert {"name": ray_tmp["name"], "mountPath": "/tmp/ray"} in mounts
    validate(cluster)
    off = installed_objects(render_chart({"autoscaling": {"enabled": False}}))
    (plain,) = by_kind(off, "RayCluster")
    assert "autoscalerOptions" not in plain["spec"]
    assert security.assert_no_api_token_in_ray_containers(off) == 0


# ------------------------------------------------------- readOnlyRootFilesystem everywhere


def test_every_container_has_a_read_only_root(profile_objects):
    for where, objects in every_output(profile_objects).items():
        assert security.assert_read_only_root(objects), where
    serving = installed_objects(render_chart(SERVING))
    assert by_kind(serving, "RayService")
    security.assert_read_only_root(serving)


def test_home_is_not_mounted_over_the_images_python():
    """rayproject/ray installs Python under /home/ray (anaconda3): an emptyDir there would hide
    it, so HOME moves to an emptyDir below it."""
    assert pods.HOME.startswith("/home/ray/") and pods.HOME != "/home/ray"
    assert not pods.HOME.startswith("/home/ray/anaconda3")


def test_chart_and_render_write_the_same_ray_container_layout(profile_objects):
    (cluster,) = by_kind(profile_objects["default"], "RayCluster")
    (job,) = by_kind(rendered_specs()["jobs/digits/train.yaml"], "RayJob")
    for group in ("headGroupSpec",):
        chart_pod = cluster["spec"][group]["template"]["spec"]
        render_pod = job["spec"]["rayClusterSpec"][group]["template"]["spec"]
        chart_c, render_c = chart_pod["containers"][0], render_pod["containers"][0]
        layout = pods.ray_volume_mounts()  # render adds the job's spec files after these
        assert chart_c["volumeMounts"] == render_c["volumeMounts"][: len(layout)] == layout
        assert chart_c["workingDir"] == render_c["workingDir"] == pods.HOME
        assert {"name": "HOME", "value": pods.HOME} in chart_c["env"]
        assert {"name": "HOME", "value": pods.HOME} in render_c["env"]
        volumes = [v for v in chart_pod["volumes"] if v["name"] != "kube-api-access"]
        assert [v["name"] for v in volumes] == [v["name"] for v in render_pod["volumes"]][:-1]


def test_operator_rayservice_validates_with_the_new_layout():
    for obj in operator_objects():
        validate(obj)
    (service,) = by_kind(operator_objects(), "RayService")
    (cluster,) = cluster_specs(service)
    assert cluster["enableInTreeAutoscaling"] is False


# ------------------------------------------------------------------------ NOTES (item 10)


SERVE_NOTE = "Serve's HTTP port (8000) is unauthenticated on team-a-rayfleet-serve"


def test_notes_say_serve_is_unauthenticated():
    serving = render_chart(SERVING)
    notes = serving["rayfleet/templates/NOTES.txt"]
    assert SERVE_NOTE in notes
    assert "tokenSecretName" in notes and "ingress" in notes
    operator = render_chart({"operator": {"enabled": True}})["rayfleet/templates/NOTES.txt"]
    assert "unauthenticated" in operator and "spec.auth.tokenSecretName" in operator
    plain = render_chart()["rayfleet/templates/NOTES.txt"]
    assert "unauthenticated" not in plain  # no Serve port in a training-only release


# ---------------------------------------------- spec.auth: the Serve token from a Secret


def _ray_containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (service,) = by_kind(objects, "RayService")
    (cluster,) = cluster_specs(service)
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    return [t["spec"]["containers"][0] for t in templates]


TOKEN_ENV = {
    "name": "RAYFLEET_SERVE_TOKEN",
    "valueFrom": {"secretKeyRef": {"name": "digits-token", "key": "token"}},
}


def test_serve_token_reaches_every_ray_container_from_its_secret(tmp_path):
    from rayfleet.serve.auth import TOKEN_ENV as SERVING_READS

    assert pods.SERVE_TOKEN_ENV == SERVING_READS == TOKEN_ENV["name"]
    doc = yaml.safe_load((REPO / "jobs/digits/serve.yaml").read_text())
    doc["spec"]["auth"] = {"tokenSecretName": "digits-token"}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(doc))
    objects = render_objects(read_spec_file(path))
    for container in _ray_containers(objects):
        assert TOKEN_ENV in container["env"], container["name"]
    for obj in objects:
        validate(obj)
    security.assert_no_secret_data(objects)
    doc["metadata"] |= {"namespace": "ml", "uid": "u-1"}
    for container in _ray_containers(reconcile.desired_objects(doc)):
        assert TOKEN_ENV in container["env"]
    # Without spec.auth there is no token env at all.
    plain = render_objects(read_spec_file("jobs/digits/serve.yaml"))
    for container in _ray_containers(plain):
        assert "RAYFLEET_SERVE_TOKEN" not in {e["name"] for e in container["env"]}


def test_chart_serving_values_take_the_same_switch():
    from rayfleet.specs import parse_spec

    values = {
        "serve": {"enabled": True, "source": {"run": "d"},
                  "auth": {"tokenSecretName": "digits-token"}},
        "operator": {"enabled": True},
    }  # fmt: skip
    objects = installed_objects(render_chart(values))
    (md,) = by_kind(objects, "ModelDeployment")
    assert md["spec"]["auth"] == {"tokenSecretName": "digits-token"}
    for container in _ray_containers(objects):
        assert TOKEN_ENV in container["env"], container["name"]
    (service,) = by_kind(objects, "RayService")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert parse_spec(app["args"]["spec"]).spec.auth.token_secret_name == "digits-token"
    notes = render_chart(values)["rayfleet/templates/NOTES.txt"]
    assert SERVE_NOTE not in notes
    # The RayCluster (training) never gets the Serve token.
    (cluster,) = by_kind(objects, "RayCluster")
    for template in [cluster["spec"]["headGroupSpec"]["template"]]:
        assert "RAYFLEET_SERVE_TOKEN" not in str(template)
