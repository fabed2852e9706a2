"""The chart's metrics wiring: a PodMonitor for the Ray pods (off by default) and the
NetworkPolicy rule that lets a named Prometheus reach Ray's metrics port, on the RayCluster the
chart templates and on the RayServices its operator writes (the same rule from both renderers).

No PodMonitor CRD schema is available here (kubernetes-validate does not know the Prometheus
Operator's kinds, and ../shared has none), so its shape is checked against a minimal schema
written from the monitoring.coreos.com/v1 PodMonitor reference: the fields this chart uses,
unknown ones refused."""

from __future__ import annotations

import jsonschema
import pytest

from tests.k8s import security
from tests.k8s.conftest import chart_objects, operator_children, operator_options, render_chart
from tests.k8s.objects import by_kind
from tests.k8s.schemas import validate

pytestmark = pytest.mark.k8s

_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
POD_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 63}, "labels": _LABELS},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": _LABELS,
                        "matchExpressions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["key", "operator"],
                                "additionalProperties": False,
                                "properties": {
                                    "key": {"type": "string"},
                                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                    "values": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(0|([0-9]+(ms|s|m|h))+)$"},
                        },
                    },
                },
            },
        },
    },
}


def test_no_pod_monitor_by_default():
    assert by_kind(chart_objects(render_chart()), "PodMonitor") == []


def test_pod_monitor_scrapes_every_rayfleet_ray_pod_on_the_metrics_port():
    monitor_values = {"enabled": True, "interval": "15s", "labels": {"release": "kps"}}
    (monitor,) = by_kind(chart_objects(render_chart({"metrics": {"podMonitor": monitor_values}})),
                         "PodMonitor")  # fmt: skip
    jsonschema.Draft7Validator(POD_MONITOR).validate(monitor)
    assert monitor["metadata"]["labels"]["release"] == "kps"
    spec = monitor["spec"]
    # KubeRay's label on every Ray pod (head and workers: Serve's proxies and replicas), and
    # rayfleet's on the chart's RayCluster and the operator's RayServices alike.
    assert spec["selector"] == {
        "matchLabels": {"ray.io/is-ray-node": "yes"},
        "matchExpressions": [{"key": "rayfleet.io/cluster", "operator": "Exists"}],
    }
    assert spec["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]


def test_a_bad_interval_is_refused_by_the_values_schema():
    with pytest.raises(Exception, match="interval"):
        render_chart({"metrics": {"podMonitor": {"enabled": True, "interval": "often"}}})


def test_scrape_from_opens_only_the_metrics_port_to_prometheus():
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    (base,) = by_kind(chart_objects(render_chart()), "NetworkPolicy")
    rendered = render_chart({"metrics": {"scrapeFrom": {"prom": prometheus}}})
    (policy,) = by_kind(chart_objects(rendered), "NetworkPolicy")
    validate(policy)
    added = [r for r in policy["spec"]["ingress"] if r not in base["spec"]["ingress"]]
    assert added == [{"from": [prometheus], "ports": [{"protocol": "TCP", "port": 8080}]}]


def test_scrape_from_reaches_the_operators_rayservices_with_the_chart_rule():
    """metrics.scrapeFrom becomes the operator's --scrape-from, and the NetworkPolicy it writes
    for a RayService opens the metrics port to those peers exactly as the chart's RayCluster
    policy does: the PodMonitor selects both kinds of pods."""
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    nodes = {"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}}
    values = {
        "metrics": {"scrapeFrom": {"prom": prometheus, "nodes": nodes}},
        "serve": {"enabled": True, "source": {"run": "digits"}},
        "operator": {"enabled": True},
    }
    objects = chart_objects(render_chart(values))
    assert operator_options(objects).scrape_from == (nodes, prometheus)  # keyed: sorted by name
    children = operator_children(objects)
    (chart_policy,) = by_kind(objects, "NetworkPolicy")
    (operator_policy,) = by_kind(children, "NetworkPolicy")
    assert chart_policy["spec"]["podSelector"] != operator_policy["spec"]["podSelector"]

    def scrape_rules(policy):
        validate(policy)
        return [r for r in policy["spec"]["ingress"] if {"protocol": "TCP", "port": 8080} in
                r.get("ports", [])]  # fmt: skip

    want = [{"from": [nodes, prometheus], "ports": [{"protocol": "TCP", "port": 8080}]}]
    assert scrape_rules(chart_policy) == scrape_rules(operator_policy) == want
    security.assert_network_policy(objects + children, scrape_peers=2)


def test_without_scrape_from_no_policy_opens_the_metrics_port():
    values = {
        "serve": {"enabled": True, "source": {"run": "digits"}},
        "operator": {"enabled": True},
    }
    objects = chart_objects(render_chart(values))
    assert operator_options(objects).scrape_from == ()
    security.assert_network_policy(objects + operator_children(objects), scrape_peers=0)
