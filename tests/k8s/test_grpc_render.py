"""Serve's gRPC ingress on Kubernetes (spec.grpcPort): what `rayfleet render`, the operator and
the chart's serving values write for it, strict-valid: the RayService's serveConfigV2
grpc_options, the `grpc` container port on every Ray node (which KubeRay's head Service
carries), and the NetworkPolicy's Serve rule; and nothing of it while the port is unset."""

from __future__ import annotations

import json

import pytest
import yaml

from rayfleet.errors import SpecError
from rayfleet.k8s import RenderOptions, read_spec_file, reconcile, render_objects
from rayfleet.serve.config import serve_config_text
from rayfleet.serve.grpc import SERVICER_FUNCTION
from tests.k8s.conftest import CHART, chart_objects, operator_children, render_chart
from tests.k8s.objects import by_kind, pod_templates
from tests.k8s.schemas import REPO, validate

pytestmark = pytest.mark.k8s
SERVE = "jobs/digits/serve.yaml"
PEER = {"podSelector": {"matchLabels": {"app": "gateway"}}}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def _objects(*overrides: str) -> list[dict]:
    spec = read_spec_file(SERVE, ("spec.replicas=2", *overrides))
    return render_objects(spec, RenderOptions(serve_from=(PEER,)))


def _serve_rule(policy: dict) -> dict:
    """The rule that opens Serve to its clients and peers (not the operator's health check,
    which also names 8000 next to the dashboard's 8265)."""
    (rule,) = [r for r in policy["spec"]["ingress"] if (ports := r.get("ports") or [])
               and {"protocol": "TCP", "port": 8000} in ports
               and {"protocol": "TCP", "port": 8265} not in ports]  # fmt: skip
    return rule


def _ray_ports(service: dict) -> dict[str, list[dict]]:
    return {
        where: template["spec"]["containers"][0].get("ports", [])
        for where, template in pod_templates(service)
    }


def test_grpc_port_reaches_serve_config_pods_and_network_policy():
    objects = _objects("spec.grpcPort=9000")
    for obj in objects:
        validate(obj)
    (service,) = by_kind(objects, "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert config["grpc_options"] == {"port": 9000, "grpc_servicer_functions": [SERVICER_FUNCTION]}
    # Serve's config `args` leave it out: changing the port must not roll the replicas.
    assert "grpcPort" not in config["applications"][0]["args"]["spec"]["spec"]
    ports = _ray_ports(service)
    assert len(ports) == 2  # head and the worker group
    for where, declared in ports.items():
        assert {"name": "grpc", "containerPort": 9000, "protocol": "TCP"} in declared, where
    (policy,) = by_kind(objects, "NetworkPolicy")
    rule = _serve_rule(policy)
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 9000}]
    assert PEER in rule["from"]
    # Nowhere else: the Ray ports' rule for named clients does not gain it.
    others = [r for r in policy["spec"]["ingress"] if r is not rule]
    assert all({"protocol": "TCP", "port": 9000} not in (r.get("ports") or []) for r in others)


def test_without_grpc_port_nothing_of_grpc_is_rendered():
    objects = _objects()
    (service,) = by_kind(objects, "RayService")
    assert "grpc_options" not in yaml.safe_load(service["spec"]["serveConfigV2"])
    assert all(p["name"] != "grpc" for ports in _ray_ports(service).values() for p in ports)
    (policy,) = by_kind(objects, "NetworkPolicy")
    assert _serve_rule(policy)["ports"] == [{"protocol": "TCP", "port": 8000}]


@pytest.mark.parametrize("port", [8000, 6379, 8265, 10001, 8080])
def test_a_grpc_port_ray_already_uses_is_refused(port):
    with pytest.raises(SpecError, match=f"spec.grpcPort {port} is a port Ray or Serve"):
        _objects(f"spec.grpcPort={port}")


def test_chart_serve_grpc_port_is_the_operators_grpc_wiring():
    values = {"serve": {"enabled": True, "source": {"run": "digits"}, "grpcPort": 9000},
              "operator": {"enabled": True}}  # fmt: skip
    objects = chart_objects(render_chart(values))
    (md,) = by_kind(objects, "ModelDeployment")
    validate(md)
    assert md["spec"]["grpcPort"] == 9000
    children = operator_children(objects)
    (service,) = by_kind(children, "RayService")
    validate(service)
    assert service["spec"]["serveConfigV2"] == serve_config_text(reconcile.parse(md))
    assert "grpc_options" in yaml.safe_load(service["spec"]["serveConfigV2"])
    (policy,) = by_kind(children, "NetworkPolicy")
    validate(policy)
    assert {"protocol": "TCP", "port": 9000} in _serve_rule(policy)["ports"]


def test_chart_grpc_port_schema_matches_the_crd():
    from rayfleet.k8s import crd

    want = crd.spec_schema()["properties"]["grpcPort"]
    serve = json.loads((CHART / "values.schema.json").read_text())["properties"]["serve"]
    have = serve["properties"]["grpcPort"]
    assert (have["minimum"], have["maximum"]) == (want["minimum"], want["maximum"])
    assert "null" in have["type"]  # null: off
