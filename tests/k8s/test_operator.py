"""The kopf operator: it imports and registers without an API server, and its handlers drive
an in-memory API (tests/k8s/fake_api.py) through create -> scale -> status, errors included.
The chart's RBAC for it is exactly the calls it makes."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest
import yaml

from rayfleet.k8s import crd, pods, reconcile
from rayfleet.k8s import operator as op
from rayfleet.k8s.serveconfig import targets
from tests.k8s.conftest import chart_objects, render_chart
from tests.k8s.fake_api import FakeCluster
from tests.k8s.objects import by_kind, load_docs
from tests.k8s.schemas import REPO

pytestmark = pytest.mark.k8s


@pytest.fixture
def api(monkeypatch) -> FakeCluster:
    fake = FakeCluster("ml")
    monkeypatch.setattr(op._State, "cluster", fake)
    events: list[tuple[str, str, str]] = []
    monkeypatch.setattr(
        op, "_post", lambda md, t, reason, message: events.append((t, reason, message))
    )
    fake.events = events  # type: ignore[attr-defined]
    return fake


def applied(api: FakeCluster, **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "jobs/digits/serve.yaml").read_text())
    doc["spec"].update(spec)
    return api.put(doc)


def kuberay_observes(api: FakeCluster, deployment_status: str = "HEALTHY") -> dict[str, Any]:
    """What KubeRay does after a write: observe the generation, report Serve's status."""
    service = api.objects[("RayService", "ml", "digits")]
    service["status"] = {
        "observedGeneration": service["metadata"]["generation"],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "NonZeroServeEndpoints",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],  # fmt: skip
        "activeServiceStatus": {
            "applicationStatuses": {
                "digits": {
                    "status": "RUNNING",
                    "serveDeploymentStatuses": {"ModelServer": {"status": deployment_status}},
                }
            }
        },
    }
    return copy.deepcopy(service)


def md_status(api: FakeCluster) -> dict[str, Any]:
    return api.objects[("ModelDeployment", "ml", "digits")].get("status") or {}


def test_importing_registers_the_handlers_without_an_api_server(monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    registry = kopf.get_default_registry()
    changing = registry._changing.get_all_handlers()
    ours = [h for h in changing if h.fn is op.model_deployment_changed]
    assert {h.reason for h in ours} == {None, "create", "update"}  # None: resume
    for h in ours:
        assert (h.selector.group, h.selector.version) == (crd.GROUP, crd.VERSION)
        assert h.selector.any_name == crd.PLURAL
        assert not h.requires_finalizer  # deletion goes through owner references
    (watch,) = [h for h in registry._watching.get_all_handlers() if h.fn is op.ray_service_changed]
    assert (watch.selector.group, watch.selector.any_name) == ("ray.io", "rayservices")
    assert watch.labels == {reconcile.OWNER_LABEL: kopf.PRESENT}
    assert not registry._spawning.get_all_handlers()  # no timers/daemons: they add finalizers


def test_settings_need_no_peering_and_no_scanning():
    settings = kopf.OperatorSettings()
    op.configure(settings)
    assert settings.peering.standalone is True
    assert settings.scanning.disabled is True
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)


def test_create_then_scale_then_status(api):
    md = applied(api)
    op.reconcile_one(md)
    creates = [(c[1], c[2]) for c in api.writes() if c[0] == "create"]
    assert creates == [  # the RayService after its NetworkPolicy and PDB
        ("NetworkPolicy", "digits"),
        ("PodDisruptionBudget", "digits-head"),
        ("RayService", "digits"),
    ]
    ready = md_status(api)["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "Initializing")
    service = kuberay_observes(api)
    op.ray_service_changed(event={"type": "MODIFIED"}, body=service)
    assert (md_status(api)["replicas"], md_status(api)["readyReplicas"]) == (1, 1)

    # kubectl scale modeldeployment/digits --replicas=3: the scale subresource sets .spec.replicas
    api.calls.clear()
    api.patch("ModelDeployment", "ml", "digits", {"spec": {"replicas": 3}})
    op.reconcile_one(api.get("ModelDeployment", "ml", "digits"))
    patches = [c for c in api.writes() if c[0] == "patch" and c[1] != "ModelDeployment"]
    (patch,) = patches
    assert patch[1:3] == ("RayService", "digits")
    assert set(patch[3]["spec"]) == {"serveConfigV2"}
    live = api.objects[("RayService", "ml", "digits")]
    assert [t.replicas for t in targets(live["spec"]["serveConfigV2"])] == [3]
    assert ("Normal", "Updated", "patched RayService/digits (serveConfigV2)") in api.events

    service = kuberay_observes(api, "UPSCALING")
    op.ray_service_changed(event={"type": "MODIFIED"}, body=service)
    assert (md_status(api)["replicas"], md_status(api)["readyReplicas"]) == (3, 1)
    service = kuberay_observes(api, "HEALTHY")
    op.ray_service_changed(event={"type": "MODIFIED"}, body=service)
    assert (md_status(api)["replicas"], md_status(api)["readyReplicas"]) == (3, 3)
    assert md_status(api)["observedGeneration"] == 2

    # Nothing changed: nothing is written.
    api.calls.clear()
    op.reconcile_one(api.get("ModelDeployment", "ml", "digits"))
    op.ray_service_changed(event={"type": "MODIFIED"}, body=service)
    assert api.writes() == []


def test_a_deleted_rayservice_is_recreated(api):
    op.reconcile_one(applied(api))
    service = api.objects.pop(("RayService", "ml", "digits"))
    op.ray_service_changed(event={"type": "DELETED"}, body=service)
    assert ("RayService", "ml", "digits") in api.objects


def test_an_invalid_spec_is_reported_not_retried(api):
    md = applied(api, replicas=2, autoscaling={"maxReplicas": 3})  # (replicas: 1 is the default)
    with pytest.raises(kopf.PermanentError, match="set replicas or autoscaling, not both"):
        op.reconcile_one(md)
    ready = md_status(api)["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert api.events[0][:2] == ("Warning", "InvalidSpec")
    assert not [c for c in api.writes() if c[0] == "create"]


def test_a_foreign_rayservice_of_the_same_name_is_left_alone(api):
    overlay = (REPO / "manifests/overlays/digits-serve/rayservice.yaml").read_text()
    (foreign,) = by_kind(load_docs(overlay), "RayService")
    api.put(foreign)
    before = copy.deepcopy(api.objects[("RayService", "ml", "digits")])
    with pytest.raises(kopf.PermanentError, match="not owned by this ModelDeployment"):
        op.reconcile_one(applied(api))
    assert api.objects[("RayService", "ml", "digits")] == before
    assert md_status(api)["conditions"][0]["reason"] == "NameConflict"


def test_a_raced_write_is_retried(api, monkeypatch):
    op.reconcile_one(applied(api))
    api.patch("ModelDeployment", "ml", "digits", {"spec": {"replicas": 2}})
    md = api.get("ModelDeployment", "ml", "digits")
    real_get = api.get

    def stale_get(kind, namespace, name):  # the RayService changes between read and patch
        obj = real_get(kind, namespace, name)
        if kind == "RayService":
            api.patch(kind, namespace, name, {"metadata": {"labels": {"x": "y"}}})
        return obj

    monkeypatch.setattr(api, "get", stale_get)
    with pytest.raises(kopf.TemporaryError):
        op.reconcile_one(md)


def test_entrypoint_refuses_bad_options_with_one_line(capsys):
    assert op.main(["--namespace", "ml", "--egress-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: egress port 0 is not a TCP port (1-65535)"
    with pytest.raises(SystemExit) as exit_:
        op.main([])  # a scope is required
    assert exit_.value.code == 2


# ----------------------------------------------------------------------- the chart's RBAC


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_chart_rbac_is_exactly_what_the_operator_uses(api):
    # Every call the handlers made through the client, as RBAC (group, resource) -> verbs.
    md = applied(api)
    op.reconcile_one(md)
    op.ray_service_changed(event={"type": "MODIFIED"}, body=kuberay_observes(api))
    api.patch("ModelDeployment", "ml", "digits", {"spec": {"replicas": 2, "cpusPerReplica": 2}})
    op.reconcile_one(api.get("ModelDeployment", "ml", "digits"))
    for key in (("NetworkPolicy", "ml", "digits"), ("PodDisruptionBudget", "ml", "digits-head")):
        del api.objects[key]["metadata"]["labels"][reconcile.OWNER_LABEL]  # edited by hand
    op.reconcile_one(api.get("ModelDeployment", "ml", "digits"))
    groups = {
        "ModelDeployment": ("rayfleet.io", "modeldeployments"),
        "RayService": ("ray.io", "rayservices"),
        "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
        "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    }
    used: dict[tuple[str, str], set[str]] = {}
    for verb, kind, _, _ in api.calls:
        group, resource = groups[kind]
        if verb == "patch/status":
            resource, verb = f"{resource}/status", "patch"
        used.setdefault((group, resource), set()).add(verb)
    # ... plus what kopf itself does: watch (list + watch) the two kinds it handles, patch its
    # bookkeeping annotations on ModelDeployments, and post events.
    used[("rayfleet.io", "modeldeployments")] |= {"list", "watch", "patch"}
    used[("ray.io", "rayservices")] |= {"list", "watch"}
    for handler in kopf.get_default_registry()._watching.get_all_handlers():
        used[(handler.selector.group, handler.selector.any_name)] |= {"list", "watch"}
    used[("", "events")] = {"create"}
    # A child whose ownerReference sets blockOwnerDeletion is admitted (with the
    # OwnerReferencesPermissionEnforcement plugin, e.g. OpenShift) only for a writer that may
    # update the owner's finalizers.
    blocking = [
        c for c in api.calls
        if c[0] == "create" and c[3]["metadata"]["ownerReferences"][0]["blockOwnerDeletion"]
    ]  # fmt: skip
    assert blocking
    used[("rayfleet.io", "modeldeployments/finalizers")] = {"update"}
    for cluster_wide in (False, True):
        values = {"operator": {"enabled": True, "clusterWide": cluster_wide}}
        objects = chart_objects(render_chart(values))
        (role,) = by_kind(objects, "ClusterRole" if cluster_wide else "Role")
        assert _rules(role) == used
        (binding,) = by_kind(objects, "ClusterRoleBinding" if cluster_wide else "RoleBinding")
        (deployment,) = by_kind(objects, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
        command = pod["containers"][0]["command"]
        assert command[:3] == ["python", "-m", "rayfleet.k8s.operator"]
        assert ("--all-namespaces" in command) is cluster_wide
        assert ("--namespace=ml" in command) is not cluster_wide


def test_chart_operator_pod_is_hardened_and_its_flags_parse():
    objects = chart_objects(
        render_chart({"operator": {"enabled": True}, "storage": {"bucket": "models"}})
    )
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["readOnlyRootFilesystem"] is True and ctx["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert deployment["spec"]["replicas"] == 1
    (config_map,) = [
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-storage")
    ]
    assert f"--storage-config={config_map['metadata']['name']}" in container["command"]
    assert config_map["data"]["RAYFLEET_STORAGE"] == "s3://models/rayfleet"
    # The flags the chart passes are ones the entrypoint accepts (parsed, kopf not started).
    args = op.parser().parse_args(container["command"][3:])
    assert args.namespace == ["ml"]
    options = op.options_from(args)
    assert options.egress_ports == (443, 6443)
    assert options.storage_config == config_map["metadata"]["name"]
    assert options.image == pods.default_image(False)
    assert options.gpu_image == pods.default_image(True)


def test_operator_flags_are_render_flags():
    """Declared once (RenderOptions): every operator flag is a `rayfleet render` flag of the
    same name and meaning; the operator leaves out only the namespace and RayJob settings."""
    import typer.main

    from rayfleet.cli.render_commands import render
    from rayfleet.k8s.options import FLAGS, OPERATOR_FLAGS, from_flags

    app = typer.Typer()
    app.command()(render)
    command = typer.main.get_command(app)
    render_flags = {o for p in command.params if p.param_type_name == "option" for o in p.opts}
    operator_flags = {
        o for a in op.parser()._actions for o in a.option_strings if o.startswith("--")
    }
    assert {f.option for f in FLAGS} <= render_flags
    assert operator_flags - {f.option for f in OPERATOR_FLAGS} == {
        "--help", "--namespace", "--all-namespaces", "--liveness"
    }  # fmt: skip
    assert {f.option for f in FLAGS} - {f.option for f in OPERATOR_FLAGS} == {
        "--namespace", "--ttl-seconds-after-finished", "--active-deadline-seconds",
        "--backoff-limit", "--keep-failed-cluster-seconds",
    }  # fmt: skip
    argv = [
        "-n", "ml", "--image=r/i:1", "--egress-port=443", "--egress-port=9000",
        "--egress-cidr=10.0.0.0/8", "--image-pull-secret=regcred", "--head-cpu=2",
        '--serve-from={"namespaceSelector":{"matchLabels":{"team":"edge"}}}',
        '--scrape-from={"namespaceSelector":{"matchLabels":{"team":"obs"}}}',
    ]  # fmt: skip
    options = op.options_from(op.parser().parse_args(argv))
    assert options == from_flags(
        {
            "image": "r/i:1",
            "egress_ports": [443, 9000],
            "egress_cidrs": ["10.0.0.0/8"],
            "image_pull_secrets": ["regcred"],
            "head_cpu": "2",
            "serve_from": [{"namespaceSelector": {"matchLabels": {"team": "edge"}}}],
            "scrape_from": [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}],
        }
    )
    assert op.options_from(op.parser().parse_args(["-A"])) == from_flags({})


# ------------------------------------------- issue 12 item 7: children survive a re-create


def _children(api: FakeCluster) -> dict[str, dict[str, Any]]:
    keys = [("RayService", "digits"), ("NetworkPolicy", "digits"), ("PodDisruptionBudget",
            "digits-head")]  # fmt: skip
    return {kind: api.objects.get((kind, "ml", name)) for kind, name in keys}


def _recreated(api: FakeCluster) -> dict[str, Any]:
    """`kubectl delete` + `kubectl apply` of the ModelDeployment before the garbage collector
    has removed its children: a new object, same name, new UID."""
    del api.objects[("ModelDeployment", "ml", "digits")]
    doc = yaml.safe_load((REPO / "jobs/digits/serve.yaml").read_text())
    doc["metadata"]["uid"] = "uid-digits-2"
    return api.put(doc)


@pytest.mark.security
def test_network_policy_and_pdb_are_created_before_the_rayservice(api):
    op.reconcile_one(applied(api))
    creates = [c[1] for c in api.writes() if c[0] == "create"]
    assert creates == ["NetworkPolicy", "PodDisruptionBudget", "RayService"]


@pytest.mark.security
def test_children_of_a_deleted_and_recreated_model_deployment_are_adopted(api):
    op.reconcile_one(applied(api))
    old_uid = api.objects[("ModelDeployment", "ml", "digits")]["metadata"]["uid"]
    md = _recreated(api)
    assert md["metadata"]["uid"] != old_uid
    op.reconcile_one(md)  # no PermanentError
    for kind, child in _children(api).items():
        assert child is not None, kind
        assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == ["uid-digits-2"], kind
    ready = md_status(api)["conditions"][0]
    assert ready["reason"] != "NameConflict"


@pytest.mark.security
def test_a_stale_rayservice_alone_still_gets_its_policy_and_pdb(api):
    """The garbage collector removed the old NetworkPolicy and PDB but not yet the RayService:
    the new ModelDeployment's Ray pods must not run a moment without them."""
    op.reconcile_one(applied(api))
    del api.objects[("NetworkPolicy", "ml", "digits")]
    del api.objects[("PodDisruptionBudget", "ml", "digits-head")]
    md = _recreated(api)
    api.calls.clear()
    op.reconcile_one(md)
    writes = [(c[0], c[1]) for c in api.writes() if c[1] != "ModelDeployment"]
    assert writes[-1] == ("patch", "RayService")  # adopted last, after its protections
    assert {w[1] for w in writes[:-1]} == {"NetworkPolicy", "PodDisruptionBudget"}
    for kind, child in _children(api).items():
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-digits-2", kind


@pytest.mark.security
def test_a_child_removed_by_the_garbage_collector_mid_adoption_is_retried(api, monkeypatch):
    op.reconcile_one(applied(api))
    md = _recreated(api)
    real_patch = api.patch

    def collected(kind, namespace, name, patch, **kw):  # the GC wins the race for this one
        if kind == "NetworkPolicy":
            api.objects.pop((kind, namespace, name), None)
        return real_patch(kind, namespace, name, patch, **kw)

    monkeypatch.setattr(api, "patch", collected)
    with pytest.raises(kopf.TemporaryError):
        op.reconcile_one(md)
    monkeypatch.setattr(api, "patch", real_patch)
    op.reconcile_one(md)  # kopf's retry
    assert all(c is not None for c in _children(api).values())


def _watchers() -> dict[str, Any]:
    registry = kopf.get_default_registry()
    return {h.selector.any_name: h for h in registry._watching.get_all_handlers()}


@pytest.mark.security
def test_owned_network_policies_and_pdbs_are_watched():
    watchers = _watchers()
    for plural, group in (("networkpolicies", "networking.k8s.io"),
                          ("poddisruptionbudgets", "policy")):  # fmt: skip
        handler = watchers[plural]
        assert handler.fn is op.owned_child_changed
        assert handler.selector.group == group


@pytest.mark.security
def test_a_deleted_network_policy_is_recreated(api):
    op.reconcile_one(applied(api))
    policy = api.objects.pop(("NetworkPolicy", "ml", "digits"))
    op.owned_child_changed(event={"type": "DELETED"}, body=policy)
    restored = api.objects[("NetworkPolicy", "ml", "digits")]
    assert restored["spec"] == policy["spec"]
    assert restored["metadata"]["ownerReferences"] == policy["metadata"]["ownerReferences"]


@pytest.mark.security
def test_an_edited_pdb_is_restored(api):
    op.reconcile_one(applied(api))
    want = copy.deepcopy(api.objects[("PodDisruptionBudget", "ml", "digits-head")]["spec"])
    edited = api.patch("PodDisruptionBudget", "ml", "digits-head", {"spec": {"minAvailable": 0}})
    op.owned_child_changed(event={"type": "MODIFIED"}, body=edited)
    assert api.objects[("PodDisruptionBudget", "ml", "digits-head")]["spec"] == want
    # An event for a child that matches its spec writes nothing.
    api.calls.clear()
    op.owned_child_changed(
        event={"type": "MODIFIED"}, body=api.get("PodDisruptionBudget", "ml", "digits-head")
    )
    assert api.writes() == []


@pytest.mark.security
def test_a_network_policy_stripped_of_its_owner_label_is_still_repaired(api):
    """The watch follows ownerReferences, not the label a hand edit can remove."""
    op.reconcile_one(applied(api))
    edited = api.patch(
        "NetworkPolicy", "ml", "digits",
        {"metadata": {"labels": {reconcile.OWNER_LABEL: None}}, "spec": {"ingress": []}},
    )  # fmt: skip
    op.owned_child_changed(event={"type": "MODIFIED"}, body=edited)
    policy = api.objects[("NetworkPolicy", "ml", "digits")]
    assert policy["metadata"]["labels"][reconcile.OWNER_LABEL] == "digits"
    assert policy["spec"]["ingress"]


def test_an_autoscaled_deployment_as_the_api_server_stores_it_reconciles(api):
    """The CRD defaults replicas to 1, so an autoscaled ModelDeployment comes back with
    `replicas: 1` next to `autoscaling`; that is the default, not a second scaling mode."""
    md = applied(api, replicas=1, autoscaling={"minReplicas": 1, "maxReplicas": 3})
    op.reconcile_one(md)
    (service,) = [o for k, o in api.objects.items() if k[0] == "RayService"]
    (target,) = targets(service["spec"]["serveConfigV2"])
    assert target.replicas is None  # Serve autoscaling picks the count
