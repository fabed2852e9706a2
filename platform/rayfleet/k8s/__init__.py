"""KubeRay objects from rayfleet specs: what `rayfleet render` writes and manifests/ holds.

Everything here is a pure function from a validated spec (plus `RenderOptions`) to plain
dicts, so it is tested by rendering and schema validation, never against a live cluster.

    pods      the Ray image, labels, security contexts and pod templates every object shares
              (the same settings the Helm chart in charts/rayfleet renders; a test compares them)
    cluster   a RayClusterSpec (head + fixed worker groups, token auth) for RayJob / RayService
    network   the NetworkPolicy that keeps Ray's ports to the cluster's own pods
    rayjob    a RayJob running one rayfleet command, its spec ConfigMap and NetworkPolicy
    kinds     one renderer per spec kind; `RENDERERS` maps kind -> renderer
    render    load a spec file, pick its renderer, write deterministic multi-document YAML

The ModelDeployment operator and the kubectl plugin (issue 7):

    crd          the modeldeployments.rayfleet.io CRD generated from the spec models
    serveconfig  read and edit a RayService's serveConfigV2 string (one num_replicas, in place)
    reconcile    ModelDeployment -> owned RayService/NetworkPolicy/PDB, patches, status (pure)
    client       the thin adapter to the Kubernetes API (the only module that calls it)
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
