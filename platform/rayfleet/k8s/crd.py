"""The `modeldeployments.rayfleet.io` CustomResourceDefinition, generated from the spec models.

The CRD's `spec` schema is the pydantic JSON Schema of `ModelDeploymentSpec` (what `rayfleet
serve` reads), rewritten into the structural OpenAPI v3.0 subset Kubernetes accepts: `$ref`s
inlined, `Optional[X]` as a plain optional `X` (a null is pruned by the API server rather
than stored), no titles or defaults (pydantic fills defaults when the operator parses the
object, so a stored resource never pins an old default) but one, `exclusiveMinimum` in its
v3.0 boolean form. Anything else the rewrite does not understand raises, so a model change that
Kubernetes could not express fails the generator and its test, not a cluster.

Unknown fields: a structural schema may not say `additionalProperties: false` next to
`properties`; the API server drops unknown fields, and kubectl (1.27+, `--validate=strict`,
its default) refuses them with server-side field validation.

Cross-field rules the models check in validators (exactly one source; replicas or
autoscaling; minReplicas <= maxReplicas) are also CEL rules (`x-kubernetes-validations`),
built here from the models' fields and defaults, so the API server refuses an object the
operator could not reconcile (a `kubectl scale` of an autoscaled deployment fails at once,
with the rule's message, instead of turning its Ready condition False).

The scale subresource maps `kubectl scale` and HPA onto `.spec.replicas`; `.status.replicas`
and `.status.selector` (the Ray worker pods) are filled by the operator. `replicas` is the one
field with a schema default (1, what the models take when it is unset): the scale
subresource reads a missing `.spec.replicas` as 0, so HPA would see a running deployment as
scaled to zero. Under autoscaling the API server stores that default too; the rule allows
exactly that value there, and the operator ignores it (`reconcile.parse`).

    python -m rayfleet.k8s.crd            # rewrite the checked-in copies (chart and manifests)
    python -m rayfleet.k8s.crd --check    # exit 1 when a copy is stale
    python -m rayfleet.k8s.crd -o -       # print it
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

from rayfleet.k8s.render import dump_yaml
from rayfleet.specs.base import API_VERSION, MAX_NAME, NAME_RE
from rayfleet.specs.serve import AutoscalingSpec, ModelDeploymentSpec, SourceSpec
from rayfleet.usage import DeploymentUsage

GROUP, VERSION = API_VERSION.split("/")
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep"]
CATEGORIES = ["rayfleet"]
NAME = f"{PLURAL}.{GROUP}"
FILE_NAME = f"{NAME}.yaml"

# Where the generated CRD is checked in (relative to the repository root): the chart installs
# its crds/ on `helm install`; manifests/crds is for `kubectl apply -k`.
CHECKED_IN = (f"charts/rayfleet/crds/{FILE_NAME}", f"manifests/crds/{FILE_NAME}")
HEADER = (
    "# Written by `python -m rayfleet.k8s.crd` from rayfleet's ModelDeployment models; do not\n"
    "# edit by hand. Install: kubectl apply --server-side -f <this file>\n"
)

# Keys the rewrite keeps as they are (OpenAPI v3.0 keywords Kubernetes understands).
_KEEP = {
    "type",
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
}
_DROP = {"title", "default", "$schema", "examples"}
DNS1035_PATTERN = f"^{NAME_RE.pattern}$"  # the one name rule (specs.base.NAME_RE), anchored
REPLICAS_DEFAULT = 1  # ModelDeployment.num_replicas when spec.replicas is unset


class SchemaError(ValueError):
    """The pydantic schema uses a construct a structural CRD schema can't express."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    name = ref.rsplit("/", 1)[-1]
    if not ref.startswith("#/$defs/") or name not in defs:
        raise SchemaError(f"unresolvable $ref {ref!r}")
    merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolve(merged, defs)


def structural(node: dict[str, Any], defs: dict[str, Any], where: str = "spec") -> dict[str, Any]:
    """One pydantic JSON Schema node -> a structural OpenAPI v3.0 node (recursively)."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        if len(branches) != 1 or len(node["anyOf"]) != 2:
            raise SchemaError(f"{where}: anyOf other than Optional[X] has no structural form")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return structural({**_resolve(branches[0], defs), **rest}, defs, where)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key in _KEEP:
            out[key] = value
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {
                name: structural(child, defs, f"{where}.{name}") for name, child in value.items()
            }
        elif key == "required":
            out["required"] = list(value)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = structural(value, defs, f"{where}.*")
            elif value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            # False: implied for a structural schema with properties (see the module doc)
        elif key == "items":
            out["items"] = structural(value, defs, f"{where}[]")
        else:
            raise SchemaError(f"{where}: JSON Schema keyword {key!r} has no structural form")
    if "type" not in out:
        raise SchemaError(f"{where}: no type (structural schemas need one on every node)")
    return _ordered(out)


_ORDER = ("type", "description", "required", "properties")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """type and description first, properties last: the order `kubectl explain` reads best."""
    first = {k: node[k] for k in _ORDER[:3] if k in node}
    rest = {k: v for k, v in node.items() if k not in _ORDER}
    last = {"properties": node["properties"]} if "properties" in node else {}
    return first | rest | last


def _alias(model: type, field: str) -> str:
    return model.model_fields[field].alias or field


def _or_default(model: type, field: str) -> str:
    """CEL for a field's value with the model's default when it is unset."""
    name = _alias(model, field)
    default = model.model_fields[field].default
    if not isinstance(default, int) or isinstance(default, bool):
        raise SchemaError(f"{model.__name__}.{field}: no integer default for a CEL rule")
    return f"(has(self.{name}) ? self.{name} : {default})"


def _rule(rule: str, message: str) -> dict[str, str]:
    return {"rule": rule, "message": message}


def validations() -> dict[str, list[dict[str, str]]]:
    """CEL rules by where they sit in the spec schema ("" is spec itself), mirroring the
    models' cross-field validators with the models' field names and defaults."""
    sources = [_alias(SourceSpec, f) for f in SourceSpec.model_fields]
    one_source = " + ".join(f"(has(self.{k}) ? 1 : 0)" for k in sources) + " == 1"
    replicas = _alias(ModelDeploymentSpec, "replicas")
    autoscaling = _alias(ModelDeploymentSpec, "autoscaling")
    low = _or_default(AutoscalingSpec, "min_replicas")
    high = _or_default(AutoscalingSpec, "max_replicas")
    low_name = _alias(AutoscalingSpec, "min_replicas")
    high_name = _alias(AutoscalingSpec, "max_replicas")
    return {
        "": [
            _rule(
                f"!has(self.{autoscaling}) || !has(self.{replicas}) "
                f"|| self.{replicas} == {REPLICAS_DEFAULT}",
                f"set {replicas} or {autoscaling}, not both (remove spec.{autoscaling} "
                f"to scale by hand)",
            )
        ],
        "source": [
            _rule(one_source, f"source: set exactly one of {', '.join(sources)}"),
        ],
        "autoscaling": [
            _rule(
                f"{low} <= {high}",
                f"autoscaling: {low_name} must not be above {high_name} "
                f"(defaults {AutoscalingSpec.model_fields['min_replicas'].default} and "
                f"{AutoscalingSpec.model_fields['max_replicas'].default})",
            )
        ],
    }


def spec_schema() -> dict[str, Any]:
    """`ModelDeploymentSpec`'s JSON Schema (camelCase) as a structural CRD schema, with the
    models' cross-field rules in CEL and the replicas default (see the module doc)."""
    raw = ModelDeploymentSpec.model_json_schema(by_alias=True)
    schema = structural(raw, raw.get("$defs", {}))
    schema["description"] = (
        "What `rayfleet serve` reads: the model source, storage, replicas or autoscaling, "
        "batching and per-replica resources (see `rayfleet schema ModelDeployment`)."
    )
    schema["properties"][_alias(ModelDeploymentSpec, "replicas")]["default"] = REPLICAS_DEFAULT
    for where, rules in validations().items():
        node = schema["properties"][where] if where else schema
        node["x-kubernetes-validations"] = rules
    return schema


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "description": "Ready, or Scaling."},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "description": "One CamelCase word."},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        },
    }


def usage_schema() -> dict[str, Any]:
    """`status.usage`: `rayfleet.usage.DeploymentUsage` as a structural schema."""
    raw = DeploymentUsage.model_json_schema(by_alias=True)
    schema = structural(raw, raw.get("$defs", {}), "status.usage")
    schema["description"] = (
        "Replica-seconds (and CPU/GPU-seconds, and cost with a price table) from the ready "
        "replica count over time, up to its newest sample (the count has held since: "
        "`kubectl rayfleet status` adds the time since)."
    )
    return schema


def status_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Filled by the rayfleet operator from the owned RayService.",
        "properties": {
            "replicas": {
                "type": "integer",
                "minimum": 0,
                "description": "Serve replicas the live application is set to (scale status).",
            },
            "readyReplicas": {
                "type": "integer",
                "minimum": 0,
                "description": "Replicas serving: the target once Serve reports it healthy.",
            },
            "selector": {
                "type": "string",
                "description": "Label selector of the Ray worker pods (for HPA pod metrics).",
            },
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "rayService": {"type": "string", "description": "The owned RayService."},
            "serveStatus": {
                "type": "string",
                "description": "The Serve application's status as KubeRay reports it.",
            },
            "servedSource": {
                "type": "string",
                "description": "The model source the Serve application last finished rolling "
                "to (run NAME, sweep NAME or checkpoint URI).",
            },
            "rollout": {
                "type": "object",
                "description": "The last change of model source: from, to, state, message.",
                "properties": {
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                    "state": {"type": "string", "enum": ["InProgress", "Complete", "Failed"]},
                    "message": {"type": "string"},
                },
            },
            "usage": usage_schema(),
            "conditions": {
                "type": "array",
                "items": _condition_schema(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    schema = {
        "type": "object",
        "description": "A trained model served on Ray Serve through a KubeRay RayService.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "description": "Also the RayService's name: KubeRay needs a DNS-1035 "
                        f"label of at most {MAX_NAME} characters.",
                        "maxLength": MAX_NAME,
                        "pattern": DNS1035_PATTERN,
                    }
                },
            },
            "spec": spec_schema(),
            "status": status_schema(),
        },
    }
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
        "subresources": {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        "additionalPrinterColumns": [
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Serve", "type": "string", "jsonPath": ".status.serveStatus"},
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": NAME,
            "labels": {
                "app.kubernetes.io/name": "rayfleet",
                "app.kubernetes.io/part-of": "rayfleet",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def crd_text() -> str:
    return dump_yaml([copy.deepcopy(crd())], HEADER)


def stale(root: Path) -> list[str]:
    """Checked-in copies under `root` that differ from what this code generates."""
    text = crd_text()
    return [
        rel for rel in CHECKED_IN if not (root / rel).is_file() or (root / rel).read_text() != text
    ]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rayfleet.k8s.crd", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a checked-in copy is stale"
    )
    parser.add_argument("-o", "--output", help="write here instead ('-': stdout)")
    parser.add_argument(
        "--root", type=Path, default=None, help="repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    root = args.root or _repo_root()
    if args.output == "-":
        sys.stdout.write(crd_text())
        return 0
    if args.output:
        Path(args.output).write_text(crd_text())
        return 0
    if args.check:
        out = stale(root)
        for rel in out:
            sys.stderr.write(f"{rel} is stale: run python -m rayfleet.k8s.crd\n")
        return 1 if out else 0
    for rel in CHECKED_IN:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(crd_text())
        sys.stdout.write(f"wrote {rel}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
