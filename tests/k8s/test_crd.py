"""The ModelDeployment CRD: generated from the spec models, structural, valid for Kubernetes,
accepting every shipped ModelDeployment and refusing typos, with a working scale subresource;
the checked-in copies are current, and the HPA example targets it."""

from __future__ import annotations

import copy
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rayfleet.k8s import crd
from rayfleet.specs.serve import AutoscalingSpec, BatchingSpec, ModelDeploymentSpec, SourceSpec
from tests.k8s.objects import load_docs
from tests.k8s.schemas import KUBERNETES_VERSION, REPO, strict, validate_builtin

pytestmark = pytest.mark.k8s
CHECKED_IN = [REPO / rel for rel in crd.CHECKED_IN]
HPA = REPO / "manifests" / "examples" / "digits-hpa.yaml"


def shipped_model_deployments() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((REPO / "jobs").rglob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == crd.KIND:
            out.append((str(path.relative_to(REPO)), doc))
    return out


def validator() -> jsonschema.protocols.Validator:
    """The CRD's schema the way the API server and `kubectl --validate=strict` apply it:
    unknown fields refused. Draft 4 semantics: OpenAPI v3.0's boolean exclusiveMinimum."""
    (version,) = crd.crd()["spec"]["versions"]
    return jsonschema.Draft4Validator(strict(version["schema"]["openAPIV3Schema"]))


def errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator().iter_errors(doc)]


def test_checked_in_copies_are_current():
    assert crd.stale(REPO) == [], "run: python -m rayfleet.k8s.crd"
    texts = {p.read_text() for p in CHECKED_IN}
    assert len(texts) == 1
    (doc,) = load_docs(texts.pop())
    assert doc == crd.crd()


def test_check_flag_reports_a_stale_copy(tmp_path, capsys):
    assert crd.main(["--check", "--root", str(REPO)]) == 0
    assert crd.main(["--root", str(tmp_path)]) == 0  # writes both copies there
    stale = tmp_path / crd.CHECKED_IN[1]
    stale.write_text(stale.read_text().replace("minimum: 1024", "minimum: 1"))
    assert crd.main(["--check", "--root", str(tmp_path)]) == 1
    assert f"{crd.CHECKED_IN[1]} is stale" in capsys.readouterr().err


def test_the_crd_validates_with_kubernetes_validate():
    (doc,) = load_docs(CHECKED_IN[0].read_text())
    validate_builtin(doc)
    broken = copy.deepcopy(doc)
    broken["spec"]["versions"][0]["subresources"]["scale"]["specReplicaPath"] = ".spec.replicas"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _nodes(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}.*")


def test_the_schema_is_structural():
    """What the API server requires of a CRD schema (and what pydantic emits otherwise)."""
    (version,) = crd.crd()["spec"]["versions"]
    for path, node in _nodes(version["schema"]["openAPIV3Schema"]):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for key in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "default", "const"):
            if (key, path) == ("default", ".spec.replicas"):  # the one default, see below
                continue
            assert key not in node, f"{path}: {key}"
        assert node.get("additionalProperties") is not False, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_spec_fields_are_the_pydantic_models():
    """Generated, not hand-written: every level has exactly the models' (camelCase) fields."""
    spec = crd.spec_schema()

    def aliases(model) -> set[str]:
        return {f.alias or name for name, f in model.model_fields.items()}

    assert set(spec["properties"]) == aliases(ModelDeploymentSpec)
    assert set(spec["properties"]["source"]["properties"]) == aliases(SourceSpec)
    assert set(spec["properties"]["autoscaling"]["properties"]) == aliases(AutoscalingSpec)
    assert set(spec["properties"]["batching"]["properties"]) == aliases(BatchingSpec)
    assert spec["required"] == ["source"]
    assert spec["properties"]["replicas"] == {
        "type": "integer",
        "description": ModelDeploymentSpec.model_fields["replicas"].description,
        "minimum": 1,
        "default": 1,
    }
    target = spec["properties"]["autoscaling"]["properties"]["targetOngoingRequests"]
    assert target["minimum"] == 0 and target["exclusiveMinimum"] is True


def test_scale_subresource_paths_exist_in_the_schema():
    (version,) = crd.crd()["spec"]["versions"]
    scale = version["subresources"]["scale"]
    assert version["subresources"]["status"] == {}
    root = version["schema"]["openAPIV3Schema"]

    def at(path: str) -> dict[str, Any]:
        node = root
        for part in path.lstrip(".").split("."):
            node = node["properties"][part]
        return node

    assert scale["specReplicasPath"] == ".spec.replicas"
    assert at(scale["specReplicasPath"])["type"] == "integer"
    assert at(scale["statusReplicasPath"])["type"] == "integer"
    assert at(scale["labelSelectorPath"])["type"] == "string"
    conditions = at(".status.conditions")
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert {"type", "status", "reason", "message", "lastTransitionTime"} <= set(
        conditions["items"]["properties"]
    )
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Replicas"] == ".spec.replicas" and columns["Ready"] == ".status.readyReplicas"


def test_names_and_scope():
    names = crd.crd()["spec"]["names"]
    assert crd.crd()["metadata"]["name"] == "modeldeployments.rayfleet.io"
    assert (names["kind"], names["plural"], names["singular"]) == (
        "ModelDeployment",
        "modeldeployments",
        "modeldeployment",
    )
    assert crd.crd()["spec"]["scope"] == "Namespaced"
    assert crd.crd()["spec"]["versions"][0]["name"] == "v1alpha1"


@pytest.mark.parametrize(
    "path, doc", shipped_model_deployments(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_shipped_model_deployment_is_accepted(path, doc):
    """`kubectl apply -f jobs/digits/serve.yaml` passes the API server's validation."""
    assert errors(doc) == [], path


def test_there_are_shipped_model_deployments():
    assert "jobs/digits/serve.yaml" in [p for p, _ in shipped_model_deployments()]


def _digits() -> dict[str, Any]:
    return yaml.safe_load((REPO / "jobs/digits/serve.yaml").read_text())


def _with(change) -> dict[str, Any]:
    doc = _digits()
    change(doc)
    return doc


def test_valid_variants_are_accepted():
    scaling = {"minReplicas": 0, "maxReplicas": 4, "targetOngoingRequests": 0.5}
    auto = _with(lambda d: (d["spec"].pop("replicas"), d["spec"].update(autoscaling=scaling)))
    checkpoint = _with(lambda d: d["spec"].update(
        source={"checkpoint": "s3://b/runs/d/checkpoint_e000001-abc"}, modelName="digits-v2",
        storage="s3://b/team", maxOngoingRequests=64, routePrefix="/digits"))  # fmt: skip
    status = _with(lambda d: d.update(status={"replicas": 3, "readyReplicas": 1,
        "selector": "a=b", "conditions": [{"type": "Ready", "status": "True"}]}))  # fmt: skip
    for doc in (auto, checkpoint, status):
        assert errors(doc) == []


@pytest.mark.parametrize(
    "change, where",
    [
        (lambda d: d["spec"].update(replica=3), "spec: Additional properties"),
        (lambda d: d["spec"]["source"].update(runn="x"), "spec.source: Additional properties"),
        (lambda d: d["spec"]["batching"].update(maxBatchSise=8), "spec.batching: Additional"),
        (lambda d: d["spec"].update(replicas="3"), "spec.replicas: '3' is not of type"),
        (lambda d: d["spec"].update(replicas=0), "spec.replicas: 0 is less than the minimum"),
        (lambda d: d["spec"].update(cpusPerReplica=-1), "spec.cpusPerReplica: -1 is less"),
        (lambda d: d["spec"].update(maxRequestBytes=10), "spec.maxRequestBytes: 10 is less"),
        (
            lambda d: d["spec"].update(autoscaling={"targetOngoingRequests": 0}),
            "spec.autoscaling.targetOngoingRequests: 0 is less than or equal to the minimum",
        ),
        (lambda d: d["spec"].pop("source"), "spec: 'source' is a required property"),
        (lambda d: d.pop("spec"), ": 'spec' is a required property"),
        (lambda d: d["metadata"].update(name="Digits"), "metadata.name: 'Digits' does not match"),
        (lambda d: d["metadata"].update(name="d" * 48), "metadata.name: 'ddd"),
        (lambda d: d.update(status={"replica": 1}), "status: Additional properties"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_typos_and_bad_values_are_rejected(change, where):
    found = errors(_with(change))
    assert any(e.startswith(where) for e in found), found


def test_unsupported_schema_constructs_fail_the_generator():
    with pytest.raises(crd.SchemaError, match="anyOf other than Optional"):
        crd.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})
    with pytest.raises(crd.SchemaError, match="unresolvable"):
        crd.structural({"$ref": "#/$defs/Nope"}, {})
    with pytest.raises(crd.SchemaError, match="no type"):
        crd.structural({"description": "x"}, {})
    with pytest.raises(crd.SchemaError, match="'const'"):
        crd.structural({"type": "string", "const": "a"}, {})


def test_manifests_crds_kustomization_builds_the_crd():
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed for `kubectl kustomize` (it works offline)"
    done = subprocess.run(
        [kubectl, "kustomize", str(REPO / "manifests" / "crds")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert load_docs(done.stdout) == [crd.crd()]


def test_hpa_example_targets_a_model_deployment():
    (hpa,) = load_docs(HPA.read_text())
    validate_builtin(hpa)
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {
        "apiVersion": crd.API_VERSION,
        "kind": crd.KIND,
        "name": _digits()["metadata"]["name"],
    }
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"] >= 1


# ------------------------------------------------------- CEL rules and the replicas default


def _rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


@pytest.mark.security
def test_cross_field_rules_are_cel_validations():
    """The API server refuses what pydantic would: no object the operator can't reconcile is
    stored (and `kubectl scale` onto an autoscaled deployment fails at once)."""
    spec = crd.spec_schema()
    assert len(_rules(spec)) == 1 and "autoscaling" in _rules(spec)[0]
    (source,) = _rules(spec["properties"]["source"])
    assert all(f"has(self.{k})" in source for k in ("checkpoint", "run", "sweep"))
    (ordered,) = _rules(spec["properties"]["autoscaling"])
    assert "self.minReplicas" in ordered and "self.maxReplicas" in ordered
    for node in (spec, spec["properties"]["source"], spec["properties"]["autoscaling"]):
        for rule in node["x-kubernetes-validations"]:
            assert rule["message"] and "\n" not in rule["message"]


@pytest.mark.security
def test_replicas_defaults_to_one_for_the_scale_subresource():
    """Without a default `kubectl get --subresource=scale` (and HPA) read 0 replicas from a
    ModelDeployment that never set spec.replicas, though it runs one."""
    replicas = crd.spec_schema()["properties"]["replicas"]
    assert replicas["default"] == 1 == crd.REPLICAS_DEFAULT
    from rayfleet.specs import parse_spec

    doc = _digits()
    doc["spec"].pop("replicas")
    assert parse_spec(doc).num_replicas == crd.REPLICAS_DEFAULT


def _celpy():
    return pytest.importorskip("celpy", reason="cel-python evaluates the CRD's CEL rules")


def cel_errors(doc: dict[str, Any]) -> list[str]:
    """The CRD's x-kubernetes-validations evaluated as the API server does: after defaulting
    (replicas: 1), each rule with `self` bound to its node, skipped when the node is absent."""
    celpy = _celpy()
    env = celpy.Environment()
    spec = copy.deepcopy(doc["spec"])
    schema = crd.spec_schema()
    for name, node in schema["properties"].items():
        if "default" in node and name not in spec:
            spec[name] = node["default"]
    out = []
    targets = [(schema, spec)] + [
        (schema["properties"][k], spec[k]) for k in ("source", "autoscaling") if k in spec
    ]
    for node, value in targets:
        for rule in node.get("x-kubernetes-validations", []):
            program = env.program(env.compile(rule["rule"]))
            if not program.evaluate({"self": celpy.json_to_cel(value)}):
                out.append(rule["message"])
    return out


@pytest.mark.security
@pytest.mark.parametrize(
    "path, doc", shipped_model_deployments(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_cel_rules_accept_every_shipped_model_deployment(path, doc):
    assert cel_errors(doc) == [], path


@pytest.mark.security
def test_cel_rules_accept_valid_variants():
    auto = _with(lambda d: (d["spec"].pop("replicas"), d["spec"].update(
        autoscaling={"minReplicas": 0, "maxReplicas": 4})))  # fmt: skip
    only_min = _with(
        lambda d: (d["spec"].pop("replicas"), d["spec"].update(autoscaling={"minReplicas": 2}))
    )  # fmt: skip  (maxReplicas defaults to 2)
    for doc in (auto, only_min, _with(lambda d: d["spec"].pop("replicas"))):
        assert cel_errors(doc) == [], doc["spec"]


@pytest.mark.security
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["spec"]["source"].update(sweep="s"), "exactly one of"),
        (lambda d: d["spec"].update(source={}), "exactly one of"),
        (lambda d: d["spec"].update(replicas=3, autoscaling={}), "not both"),
        (
            lambda d: d["spec"].update(
                replicas=None, autoscaling={"minReplicas": 5, "maxReplicas": 3}
            ),
            "minReplicas",
        ),  # fmt: skip
        (lambda d: d["spec"].update(replicas=None, autoscaling={"minReplicas": 3}), "minReplicas"),
    ],
    ids=["two-sources", "no-source", "replicas-and-autoscaling", "min-above-max", "min-above-2"],
)
def test_cel_rules_refuse_what_pydantic_refuses(change, message):
    from rayfleet.errors import SpecError
    from rayfleet.specs import parse_spec

    doc = _with(change)
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    found = cel_errors(doc)
    assert any(message in m for m in found), found
    with pytest.raises(SpecError):
        parse_spec(doc)
