"""rayfleet on Kubernetes: KubeRay objects from specs, the ModelDeployment operator, the plugin.

Two sides, kept apart (tests/k8s/test_pure_imports.py checks it):

Pure rendering: a validated spec (plus `RenderOptions`) -> plain dicts. No Kubernetes client,
no kopf, no Ray, Serve, FastAPI or torch: tested by rendering and schema validation, never
against a live cluster, and importing this package loads only these.

    options      RenderOptions: what a workload takes from its cluster, and the flags for it
                 (`rayfleet render` and the operator declare theirs from it)
    pods         the Ray image, labels, security contexts and pod pieces every object shares
                 (canonical: the Helm chart's RayCluster is checked against it)
    cluster      a RayClusterSpec (head + fixed worker groups, token auth) for RayJob/RayService
    network      the NetworkPolicy that keeps Ray's ports to the cluster's own pods
    rayjob       a RayJob running one rayfleet command, its spec ConfigMap and NetworkPolicy
    source       a spec file with the files beside it that travel to the cluster
    kinds        one renderer per spec kind; `RENDERERS` maps kind -> renderer (a
                 ModelDeployment's serveConfigV2 comes from rayfleet.serve.config)
    render       load a spec file, pick its renderer, write deterministic multi-document YAML
    crd          the modeldeployments.rayfleet.io CRD generated from the spec models
    serveconfig  read and edit any RayService's serveConfigV2 string (one num_replicas, in place)
    reconcile    the operator's decisions: ModelDeployment -> owned RayService/NetworkPolicy/
                 PDB (what `rayfleet render` writes), patches, status

Cluster-facing: the only modules that reach an API server (each imports the pure side, never
the reverse; none imports rayfleet.cli).

    client       the thin adapter to the Kubernetes API (`kubernetes` imported on first use)
    operator     kopf handlers: `python -m rayfleet.k8s.operator --namespace NS`
    plugin       `kubectl rayfleet status|scale` (console script kubectl-rayfleet)
"""

from __future__ import annotations

from rayfleet.k8s.kinds import RENDERERS
from rayfleet.k8s.options import RenderOptions
from rayfleet.k8s.render import dump_yaml, render_objects, render_text
from rayfleet.k8s.source import SpecFile, read_spec_file

__all__ = [
    "RENDERERS",
    "RenderOptions",
    "SpecFile",
    "dump_yaml",
    "read_spec_file",
    "render_objects",
    "render_text",
]
