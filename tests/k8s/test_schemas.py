"""The validators themselves are strict: a typo in a Ray or built-in object fails."""

from __future__ import annotations

import copy

import pytest

from rayfleet.k8s import RenderOptions, read_spec_file, render_objects
from tests.k8s.objects import by_kind
from tests.k8s.schemas import REPO, strict, validate

pytestmark = pytest.mark.k8s


@pytest.fixture(scope="module")
def digits():
    return render_objects(read_spec_file(REPO / "jobs/digits/train.yaml"), RenderOptions())


def test_strict_marks_objects_with_properties():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "free": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"c": {}},
            },
            "m": {"type": "object", "additionalProperties": {"properties": {"d": {}}}},
        },
    }
    out = strict(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]["free"]
    assert out["properties"]["m"]["additionalProperties"]["additionalProperties"] is False


@pytest.mark.parametrize(
    "path",
    [
        ("spec", "rayClusterSpec", "rayStartParam"),
        (
            "spec",
            "rayClusterSpec",
            "headGroupSpec",
            "template",
            "spec",
            "containers",
            0,
            "imagePullPolice",
        ),
        ("spec", "rayClusterSpec", "authOptions", "token"),
        ("spec", "submitterPodTemplate", "spec", "securityContxt"),
    ],
    ids=lambda p: p[-1],
)
def test_unknown_ray_fields_fail(digits, path):
    (job,) = by_kind(copy.deepcopy(digits), "RayJob")
    node = job
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "x"
    with pytest.raises(AssertionError, match=str(path[-1])):
        validate(job)


def test_wrong_ray_types_fail(digits):
    (job,) = by_kind(copy.deepcopy(digits), "RayJob")
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(AssertionError, match="replicas"):
        validate(job)
    job = by_kind(copy.deepcopy(digits), "RayJob")[0]
    job["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "password"
    with pytest.raises(AssertionError, match="mode"):
        validate(job)


def test_unknown_builtin_fields_fail(digits):
    (policy,) = by_kind(copy.deepcopy(digits), "NetworkPolicy")
    policy["spec"]["ingres"] = []
    with pytest.raises(AssertionError, match="ingres"):
        validate(policy)
