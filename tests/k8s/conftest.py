"""Fixtures for the k8s tier: the chart rendered once per ci/ profile, CRD schemas located.

Nothing here talks to a cluster: the chart is rendered by a real Helm engine
(helm-python-sdk), manifests are built by `kubectl kustomize`, and everything is validated
offline. The `k8s` marker is registered here too, so the tier runs before pyproject lists it.

The chart serves through the operator (a ModelDeployment, no RayService of its own), so what
an install puts on the API server is the chart's objects plus what the chart's operator makes
of its ModelDeployments: `installed_objects` adds those, computed by the operator's own pure
code (`reconcile.desired_objects`) with the flags the chart passes it, parsed by the
operator's own parser. The Python renderer is canonical; the chart is checked against it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.k8s.objects import load_docs
from tests.k8s.schemas import REPO

CHART = REPO / "charts" / "rayfleet"
PROFILES = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "team-a", "ml"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s: render + schema checks of the chart and manifests")


def render_chart(values: dict[str, Any] | None = None, *, name: str = RELEASE) -> dict[str, str]:
    """{template path: rendered text}, as `helm template` would print it."""
    import helm_python

    chart = helm_python.Chart.load(CHART)
    try:
        return chart.render(values or {}, name=name, namespace=NAMESPACE)
    finally:
        chart.close()


def chart_objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in load_docs(text)
    ]


def operator_options(objects: list[dict[str, Any]]):
    """The RenderOptions the chart's operator Deployment runs with (its command parsed by the
    operator's parser; SystemExit when the chart passes a flag the operator lacks)."""
    from rayfleet.k8s import operator

    (deployment,) = [
        o
        for o in objects
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "rayfleet.k8s.operator"], command
    return operator.options_from(operator.parser().parse_args(command[3:]))


def operator_children(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the chart's operator creates for the chart's ModelDeployments."""
    from rayfleet.k8s import reconcile

    deployments = [o for o in objects if o["kind"] == "ModelDeployment"]
    if not deployments:
        return []
    options = operator_options(objects)
    out = []
    for md in deployments:
        stored = copy.deepcopy(md)
        stored["metadata"] |= {"namespace": NAMESPACE, "uid": f"uid-{md['metadata']['name']}"}
        out += reconcile.desired_objects(stored, options)
    return out


def installed_objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The chart's objects and the operator's children of its ModelDeployments."""
    objects = chart_objects(rendered)
    return objects + operator_children(objects)


def profile_values(profile: str) -> dict[str, Any]:
    """A ci/ profile's values; "default" is values.yaml alone."""
    if profile == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{profile}-values.yaml").read_text()) or {}


@pytest.fixture(scope="session")
def rendered_profiles() -> dict[str, dict[str, str]]:
    """{profile: {template path: text}} for "default" (values.yaml alone) and every ci/ file."""
    assert PROFILES, f"no ci/*-values.yaml profiles in {CHART}"
    return {profile: render_chart(profile_values(profile)) for profile in ["default", *PROFILES]}


@pytest.fixture(scope="session")
def profile_objects(rendered_profiles) -> dict[str, list[dict[str, Any]]]:
    """{profile: what `helm install` puts on the API server}: chart objects + operator's."""
    return {name: installed_objects(rendered) for name, rendered in rendered_profiles.items()}
