"""Fixtures for the k8s tier: the chart rendered once per ci/ profile, CRD schemas located.

Nothing here talks to a cluster: the chart is rendered by a real Helm engine
(helm-python-sdk), manifests are built by `kubectl kustomize`, and everything is validated
offline. The `k8s` marker is registered here too, so the tier runs before pyproject lists it.
"""

from __future__ import annotations

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
    return {name: chart_objects(rendered) for name, rendered in rendered_profiles.items()}
