"""Security properties every rendered workload must have, chart and `rayfleet render` alike.

Asserted on rendered output, not on templates: what matters is what reaches the API server.
"""

from __future__ import annotations

import re
from typing import Any

from tests.k8s.objects import RAY_KINDS, all_container_contexts, cluster_specs, pod_templates

RAY_PORTS = {6379, 8265, 10001}
SERVE_PORT = 8000
METRICS_PORT = 8080  # KubeRay's `metrics` port on every Ray node
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


def _is_kuberay_operator(peer: dict[str, Any]) -> bool:
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    return (
        "namespaceSelector" in peer and labels.get("app.kubernetes.io/name") == "kuberay-operator"
    )


def assert_network_policy(
    objects: list[dict[str, Any]],
    serve_peers: int | None = None,
    scrape_peers: int | None = None,
) -> None:
    """Each Ray cluster's pods are selected by a NetworkPolicy whose ingress keeps the Ray
    ports to the cluster, its clients, named submitters and the operator; DNS egress works.
    `serve_peers`: how many peers besides clients the Serve rule must name (None: unchecked).
    The metrics port has a rule of its own, for nothing else; `scrape_peers`: how many peers it
    names (0: no such rule; None: unchecked)."""
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
        scrapers: list[dict[str, Any]] = []
        for rule in spec["ingress"]:
            ports = _ports(rule)
            reachable |= ports
            assert rule.get("from"), f"{cluster}: an ingress rule open to every source: {rule}"
            if any("ipBlock" in peer for peer in rule["from"]):
                assert ports <= {SERVE_PORT} or ports == {METRICS_PORT}, (
                    f"{cluster}: address ranges reach {ports}"
                )
            if METRICS_PORT in ports:
                assert ports == {METRICS_PORT}, f"{cluster}: the metrics rule opens {ports}"
                assert client not in rule["from"], f"{cluster}: clients in the metrics rule"
                scrapers += rule["from"]
                continue
            operator = any(_is_kuberay_operator(p) for p in rule["from"])
            if operator:
                assert ports <= {8265, SERVE_PORT}, f"{cluster}: the operator reaches {ports}"
            elif ports & RAY_PORTS:
                assert rule["from"][0] == client, f"{cluster}: Ray ports open to {rule}"
            if SERVE_PORT in ports and not operator and serve_peers is not None:
                assert len(rule["from"]) == 1 + serve_peers, f"{cluster}: Serve open to {rule}"
        assert RAY_PORTS <= reachable, f"{cluster}: Ray ports not covered for clients"
        if scrape_peers is not None:
            assert len(scrapers) == scrape_peers, f"{cluster}: metrics port open to {scrapers}"
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


# The standard kube-api-access layout (what the ServiceAccount admission plugin mounts when
# automountServiceAccountToken is on).
API_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def _token_volumes(spec: dict[str, Any]) -> set[str]:
    """Names of the pod's volumes that carry a Kubernetes API credential."""
    out = set()
    for volume in spec.get("volumes", []):
        sources = (volume.get("projected") or {}).get("sources", [])
        if any("serviceAccountToken" in s for s in sources):
            out.add(volume["name"])
    return out


def _autoscaler_mounts(cluster: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The autoscaler sidecar's volumeMounts (KubeRay appends autoscalerOptions.volumeMounts
    to the container it injects), or None when the cluster has no autoscaler."""
    if not cluster.get("enableInTreeAutoscaling"):
        return None
    return cluster.get("autoscalerOptions", {}).get("volumeMounts", [])


def assert_no_api_token_in_ray_containers(objects: list[dict[str, Any]]) -> int:
    """No container of any pod template (Ray head and workers, submitters, test pods) gets a
    Kubernetes API token: the pod turns automounting off and no container mounts a token
    volume. Where the in-tree autoscaler runs, it alone mounts one, at the standard path,
    from a projected volume of the head pod (token, ca.crt, namespace). Returns how many
    autoscalers were seen."""
    autoscalers = 0
    for obj in objects:
        for where, template in pod_templates(obj):
            spec = template["spec"]
            assert spec.get("automountServiceAccountToken") is False, f"{where}: automount on"
            tokens = _token_volumes(spec)
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                for mount in c.get("volumeMounts", []):
                    assert mount["name"] not in tokens, f"{where} {c['name']}: mounts {mount}"
                    assert not mount["mountPath"].startswith("/var/run/secrets/kubernetes.io"), (
                        f"{where} {c['name']}: {mount}"
                    )
        for cluster in cluster_specs(obj):
            mounts = _autoscaler_mounts(cluster)
            head = cluster["headGroupSpec"]["template"]["spec"]
            if mounts is None:
                assert not _token_volumes(head), f"{obj['metadata']['name']}: unused token"
                continue
            autoscalers += 1
            (api,) = [m for m in mounts if m["mountPath"] == API_TOKEN_PATH]
            assert api.get("readOnly") is True, api
            (volume,) = [v for v in head.get("volumes", []) if v["name"] == api["name"]]
            sources = volume["projected"]["sources"]
            token = next(s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s)
            assert token["path"] == "token" and token.get("expirationSeconds", 3600) <= 3607
            ca = next(s["configMap"] for s in sources if "configMap" in s)
            assert ca["name"] == "kube-root-ca.crt"
            assert ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
            namespace = next(s["downwardAPI"] for s in sources if "downwardAPI" in s)
            assert namespace["items"][0]["fieldRef"]["fieldPath"] == "metadata.namespace"
    return autoscalers


def _writable(mounts: list[dict[str, Any]], volumes: dict[str, Any], path: str) -> bool:
    return any(
        m["mountPath"] == path and not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
        for m in mounts
    )


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def assert_read_only_root(objects: list[dict[str, Any]]) -> int:
    """Every container has a read-only root filesystem and writable emptyDirs where it writes:
    /tmp everywhere; the Ray containers (head, workers) and the autoscaler also Ray's temp dir
    (/tmp/ray) and a HOME of their own, which is also where they start (workingDir), so a
    driver's relative paths and ~/.cache land on a volume. Returns containers seen."""
    seen = 0
    for where, _, ctx in all_container_contexts(objects):
        seen += 1
        assert ctx.get("readOnlyRootFilesystem") is True, f"{where}: writable root filesystem"
    for obj in objects:
        for where, template in pod_templates(obj):
            spec = template["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            ray_pod = obj["kind"] in RAY_KINDS and not where.endswith("submitter")
            for c in spec.get("containers", []):
                mounts = c.get("volumeMounts", [])
                assert _writable(mounts, volumes, "/tmp"), f"{where} {c['name']}: no /tmp"
                home = _env(c).get("HOME")
                if ray_pod:
                    assert home, f"{where} {c['name']}: HOME not set"
                    assert c.get("workingDir") == home, f"{where} {c['name']}: workingDir"
                    assert _writable(mounts, volumes, "/tmp/ray"), f"{where}: no /tmp/ray"
                if home and home != "/tmp":
                    assert _writable(mounts, volumes, home), f"{where} {c['name']}: HOME {home}"
        for cluster in cluster_specs(obj):
            mounts = _autoscaler_mounts(cluster)
            if mounts is None:
                continue
            head = cluster["headGroupSpec"]["template"]["spec"]
            volumes = {v["name"]: v for v in head.get("volumes", [])}
            env = {e["name"]: e.get("value") for e in cluster["autoscalerOptions"].get("env", [])}
            where = f"{obj['kind']}/{obj['metadata']['name']} autoscaler"
            for path in ("/tmp", "/tmp/ray", env.get("HOME")):
                assert path and _writable(mounts, volumes, path), f"{where}: {path} not writable"
    return seen
