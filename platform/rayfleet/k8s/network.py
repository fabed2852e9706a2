"""The NetworkPolicy around one Ray cluster.

Ray's GCS (6379), dashboard/Jobs API (8265) and client (10001) ports run arbitrary code for
whoever reaches them, so they stay inside: the cluster's own pods talk freely (Ray opens many
ports between nodes), named clients (RayJob submitters, helm tests: CLIENT_LABEL) reach the
three Ray ports, the KubeRay operator reaches the dashboard (and Serve's health check), and
Serve (8000, and its gRPC port when spec.grpcPort is set) opens only to those clients and the
peers given (`--serve-from`: an ingress controller, a gateway). Ray's metrics export port
(8080, KubeRay's `metrics`, which the chart's PodMonitor scrapes) opens only to the peers
given with `--scrape-from` (a Prometheus), as the chart's RayCluster policy does for
`metrics.scrapeFrom`: without the rule Prometheus outside the cluster's pods is blocked, and
the rule opens nothing else to it (the other ports run code). Egress: the cluster itself, DNS, and
the listed TCP ports (S3 over HTTPS), to the listed address ranges when there are any.
"""

from __future__ import annotations

import copy
from typing import Any

from rayfleet.k8s import pods
from rayfleet.k8s.options import RenderOptions


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def operator_peer(namespace: str) -> dict[str, Any]:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
    }


def network_policy(
    *,
    name: str,
    cluster: str,
    metadata_labels: dict[str, str],
    options: RenderOptions,
    serve: bool,
    redis_port: int | None = None,
    grpc_port: int | None = None,
) -> dict[str, Any]:
    """The policy of cluster `cluster`. `serve`: Serve (8000) opens to its clients and
    `options.serve_from`; the metrics port (any cluster) to `options.scrape_from`; egress to
    `options.egress_ports` (at `options.egress_cidrs`) and, with GCS fault tolerance on Redis,
    to `redis_port`. `grpc_port` (Serve's gRPC ingress) opens to the same peers as Serve's
    HTTP port."""
    own = {"podSelector": {"matchLabels": {pods.CLUSTER_LABEL: cluster}}}
    # The operator polls the dashboard, and for a RayService the head's Serve proxy health.
    operator_ports = [pods.RAY_PORTS["dashboard"]]
    if serve:
        operator_ports.append(pods.SERVE_PORT)
    clients = {"podSelector": {"matchLabels": {pods.CLIENT_LABEL: cluster}}}
    ingress: list[dict[str, Any]] = [
        {"from": [own]},
        {"from": [clients], "ports": _tcp(*pods.RAY_PORTS.values())},
        {
            "from": [operator_peer(options.kuberay_namespace)],
            "ports": _tcp(*operator_ports),
        },
    ]
    if serve:
        peers = [copy.deepcopy(p) for p in options.serve_from]
        serve_ports = [pods.SERVE_PORT] + ([grpc_port] if grpc_port is not None else [])
        ingress.append({"from": [clients, *peers], "ports": _tcp(*serve_ports)})
    if options.scrape_from:
        scrapers = [copy.deepcopy(p) for p in options.scrape_from]
        ingress.append({"from": scrapers, "ports": _tcp(pods.KUBERAY_METRICS_PORT)})
    egress: list[dict[str, Any]] = [
        {"to": [own]},
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
    ]
    if redis_port is not None:
        egress.append({"ports": _tcp(redis_port)})  # the GCS's external Redis
    if options.egress_ports:
        rule: dict[str, Any] = {"ports": _tcp(*options.egress_ports)}
        if options.egress_cidrs:
            rule["to"] = [{"ipBlock": {"cidr": cidr}} for cidr in options.egress_cidrs]
        egress.append(rule)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": metadata_labels},
        "spec": {
            "podSelector": {"matchLabels": {pods.CLUSTER_LABEL: cluster}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
