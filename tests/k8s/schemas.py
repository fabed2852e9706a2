"""Validators for rendered objects: KubeRay CRD schemas made strict, and built-in kinds.

A CRD's openAPIV3Schema lets unknown fields through unless told otherwise (the API server
prunes them silently), so a typo like `rayStartParam` would pass. Here every object schema
with `properties` and no `x-kubernetes-preserve-unknown-fields` gets `additionalProperties:
false`: an unknown field fails the test instead of vanishing on apply.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERAY_VERSION = "v1.7.0"
CRD_DIR = REPO.parent / "shared" / "kuberay-crds" / KUBERAY_VERSION
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
KUEUE_VERSION = "v0.19.2"
KUEUE_CRD_DIR = REPO.parent / "shared" / "kueue-crds" / KUEUE_VERSION
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_CRD_FILES = {
    "ClusterQueue": f"{KUEUE_GROUP}_clusterqueues.yaml",
    "LocalQueue": f"{KUEUE_GROUP}_localqueues.yaml",
    "ResourceFlavor": f"{KUEUE_GROUP}_resourceflavors.yaml",
    "WorkloadPriorityClass": f"{KUEUE_GROUP}_workloadpriorityclasses.yaml",
}
KUBERNETES_VERSION = "1.30.0"
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
# Set by .ci/run: the shared CRD folder must be there (CI has it); elsewhere checks skip.
REQUIRE_SHARED_ENV = "RAYFLEET_REQUIRE_SHARED"


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI schema where objects with `properties` reject unknown keys."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    for key in _SCHEMA_LISTS:
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    return out


def crd_dir() -> Path:
    """The KubeRay CRDs. Without them (a fresh clone with no ../shared beside it) the schema
    checks skip with the reason; CI sets RAYFLEET_REQUIRE_SHARED=1 (.ci/run), so there a
    missing folder fails the run instead of skipping silently."""
    return _shared_dir(
        CRD_DIR, CRD_FILES, f"KubeRay {KUBERAY_VERSION}", "ray-operator/config/crd/bases"
    )


def kueue_crd_dir() -> Path:
    """The Kueue CRDs, under the same skip / RAYFLEET_REQUIRE_SHARED rule as KubeRay's."""
    return _shared_dir(
        KUEUE_CRD_DIR, KUEUE_CRD_FILES, f"Kueue {KUEUE_VERSION}", "config/components/crd/bases"
    )


def _shared_dir(folder: Path, files: dict[str, str], what: str, source: str) -> Path:
    missing = [f for f in files.values() if not (folder / f).is_file()]
    if missing:
        message = (
            f"{what} CRD schemas missing in {folder}: {', '.join(missing)}; "
            f"put the project's CRDs there ({source})"
        )
        if os.environ.get(REQUIRE_SHARED_ENV) == "1":
            raise AssertionError(message)
        pytest.skip(message)
    return folder


@cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    path = crd_dir() / CRD_FILES[kind]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(path.read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strict(version["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


@cache
def kueue_validator(kind: str, version: str) -> jsonschema.protocols.Validator:
    """A Kueue kind's strict schema at `version` (v1beta2 is the storage version)."""
    path = kueue_crd_dir() / KUEUE_CRD_FILES[kind]
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = strict(found["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def validate_kueue(obj: dict[str, Any]) -> None:
    group, _, version = obj.get("apiVersion", "").partition("/")
    assert group == KUEUE_GROUP and obj["kind"] in KUEUE_CRD_FILES, f"not a Kueue kind: {obj}"
    validator = kueue_validator(obj["kind"], version)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message[:300]}" for e in errors]
        raise AssertionError(
            f"{obj['kind']} {obj['metadata']['name']} fails the strict Kueue {KUEUE_VERSION} "
            "CRD schema:\n  " + "\n  ".join(lines[:20])
        )


def validate_ray(obj: dict[str, Any]) -> None:
    assert obj.get("apiVersion") == "ray.io/v1", f"{obj.get('kind')}: use ray.io/v1"
    errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message[:300]}" for e in errors]
        raise AssertionError(
            f"{obj['kind']} {obj['metadata']['name']} fails the strict {KUBERAY_VERSION} CRD "
            "schema:\n  " + "\n  ".join(lines[:20])
        )


def validate_builtin(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(map(str, err.path))
        raise AssertionError(
            f"{obj['kind']} {obj['metadata']['name']}: {path}: {err.message[:300]}"
        ) from None


@cache
def model_deployment_validator() -> jsonschema.protocols.Validator:
    """rayfleet's own CRD (generated from the spec models) as the API server applies it:
    unknown fields refused. Draft 4 semantics: OpenAPI v3.0's boolean exclusiveMinimum."""
    from rayfleet.k8s import crd

    (version,) = crd.crd()["spec"]["versions"]
    return jsonschema.Draft4Validator(strict(version["schema"]["openAPIV3Schema"]))


def validate_model_deployment(obj: dict[str, Any]) -> None:
    """The CRD's schema; of `metadata` it constrains `name` only (the API server validates the
    rest of ObjectMeta itself), so labels and annotations are not checked here."""
    doc = {**obj, "metadata": {"name": obj["metadata"].get("name")}}
    errors = [
        f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message[:300]}"
        for e in model_deployment_validator().iter_errors(doc)
    ]
    if errors:
        raise AssertionError(
            f"ModelDeployment {obj['metadata']['name']} fails its CRD schema:\n  "
            + "\n  ".join(errors[:20])
        )


def validate(obj: dict[str, Any]) -> None:
    """Ray kinds against the strict KubeRay CRD schema, Kueue kinds against Kueue's,
    ModelDeployments against rayfleet's CRD, everything else with kubernetes-validate."""
    if obj["kind"] in CRD_FILES:
        validate_ray(obj)
    elif obj.get("apiVersion", "").startswith(f"{KUEUE_GROUP}/"):
        validate_kueue(obj)
    elif obj["kind"] == "ModelDeployment":
        validate_model_deployment(obj)
    else:
        validate_builtin(obj)
