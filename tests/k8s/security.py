"""Security properties every rendered workload must have, chart and `rayfleet render` alike.

Asserted on rendered output, not on templates: what matters is what reaches the API server.
"""

from __future__ import annotations

import re
from typing import Any

from tests.k8s.objects import RAY_KINDS, all_container_contexts, cluster_specs, pod_templates

RAY_PORTS = {6379, 8265, 10001}
SERVE_PORT = 8000
CLUSTER_LABEL = "rayfleet.io/cluster"
CLIENT_LABEL = "rayfleet.io/client-of"
_SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.I)


def assert_auth_on(objects: list[dict[str, Any]]) -> None:
    clusters = [(o, c) for o in objects for c in cluster_specs(o)]
    assert clusters, "no Ray cluster rendered"
    for obj, cluster in clusters:
        auth = cluster.get("authOptions", {})
        assert auth.get("mode") == "token", f"{obj['kind']} {obj['metadata']['name']}: {auth}"


def assert_containers_hardened(objects: list[dict[str, Any]]) -> int:
    """Every container: non-root, no privilege escalation, ALL capabilities dropped, seccomp."""
    seen = 0
    for where, pod_ctx, ctx in all_container_contexts(objects):
        seen += 1
        assert ctx.get("allowPrivilegeEscalation") is False, where
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not ctx.get("capabilities", {}).get("add"), where
        assert ctx.get("privileged") is not True, where
        assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        assert non_root is True, f"{where}: runAsNonRoot not set"
        uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        assert uid is not None and uid != 0, f"{where}: runs as uid {uid}"
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
    assert seen, "no containers found"
    return seen


def assert_no_host_access(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        for where, template in pod_templates(obj):
            spec = template["spec"]
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                assert not spec.get(key), f"{where}: {key}"
            for volume in spec.get("volumes", []):
                assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"


def assert_no_secret_data(objects: list[dict[str, Any]]) -> None:
    """No Secret objects, and nothing secret-looking as a literal env value."""
    assert not [o for o in objects if o["kind"] == "Secret"], "a Secret was rendered"
    for obj in objects:
        for where, template in pod_templates(obj):
            for c in template["spec"].get("containers", []):
                for env in c.get("env", []):
                    if _SECRETISH.search(env["name"]):
                        assert "value" not in env, f"{where}: {env['name']} has a literal value"


def _cluster_pods(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
    """cluster label -> the label sets of its pod templates (head and workers)."""
    out: dict[str, list[dict[str, str]]] = {}
    for obj in objects:
        if obj["kind"] not in RAY_KINDS:
            continue
        for where, template in pod_templates(obj):
            if where.endswith("submitter"):
                continue
            labels = template["metadata"]["labels"]
            assert CLUSTER_LABEL in labels, f"{where}: no {CLUSTER_LABEL} label"
            out.setdefault(labels[CLUSTER_LABEL], []).append(labels)
    return out


def _ports(rule: dict[str, Any]) -> set[int]:
    return {p["port"] for p in rule.get("ports", [])}


def assert_network_policy(objects: list[dict[str, Any]], serve_peers: int | None = None) -> None:
    """Each Ray cluster's pods are selected by a NetworkPolicy whose ingress keeps the Ray
    ports to the cluster, its clients, named submitters and the operator; DNS egress works.
    `serve_peers`: how many peers besides clients the Serve rule must name (None: unchecked)."""
    policies = {
        p["spec"]["podSelector"]["matchLabels"].get(CLUSTER_LABEL): p
        for p in objects
        if p["kind"] == "NetworkPolicy"
    }
    clusters = _cluster_pods(objects)
    assert clusters
    for cluster in clusters:
        assert cluster in policies, f"no NetworkPolicy selects cluster {cluster}"
        spec = policies[cluster]["spec"]
        assert "Ingress" in spec["policyTypes"]
        own = {"podSelector": {"matchLabels": {CLUSTER_LABEL: cluster}}}
        client = {"podSelector": {"matchLabels": {CLIENT_LABEL: cluster}}}
        unrestricted = [r for r in spec["ingress"] if not r.get("ports")]
        assert unrestricted == [{"from": [own]}], f"{cluster}: all-port rules {unrestricted}"
        reachable: set[int] = set()
        for rule in spec["ingress"]:
            ports = _ports(rule)
            reachable |= ports
            assert rule.get("from"), f"{cluster}: an ingress rule open to every source: {rule}"
            if any("ipBlock" in peer for peer in rule["from"]):
                assert ports <= {SERVE_PORT}, f"{cluster}: address ranges reach {ports}"
            operator = "namespaceSelector" in rule["from"][0] and client not in rule["from"]
            if operator:
                assert ports <= {8265, SERVE_PORT}, f"{cluster}: the operator reaches {ports}"
            elif ports & RAY_PORTS:
                assert rule["from"][0] == client, f"{cluster}: Ray ports open to {rule}"
            if SERVE_PORT in ports and not operator and serve_peers is not None:
                assert len(rule["from"]) == 1 + serve_peers, f"{cluster}: Serve open to {rule}"
        assert RAY_PORTS <= reachable, f"{cluster}: Ray ports not covered for clients"
        if "Egress" in spec["policyTypes"]:
            dns = [r for r in spec["egress"] if _ports(r) == {53}]
            protocols = {p["protocol"] for r in dns for p in r["ports"]}
            assert protocols == {"UDP", "TCP"}, f"{cluster}: DNS egress {spec['egress']}"
            assert not dns[0].get("to"), f"{cluster}: DNS limited to {dns[0]['to']}"


def assert_head_pdb(objects: list[dict[str, Any]]) -> None:
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for cluster in _cluster_pods(objects):
        matching = [
            p
            for p in pdbs
            if p["spec"]["selector"]["matchLabels"]
            == {CLUSTER_LABEL: cluster, "ray.io/node-type": "head"}
        ]
        assert len(matching) == 1, f"cluster {cluster}: head PDBs {matching}"
        assert matching[0]["spec"].get("minAvailable") == 1


def assert_not_exposed(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        for cluster in cluster_specs(obj):
            head = cluster["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", obj["metadata"]["name"]
            assert not head.get("enableIngress"), obj["metadata"]["name"]
    assert not [o for o in objects if o["kind"] in ("Ingress", "Route", "HTTPRoute")]
