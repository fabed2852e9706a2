"""Typed job specs: pydantic v2 models for every kind a user writes, and `load_spec`.

One module per kind (`train`, `sweep`, ...) plus `base` for what they share. The JSON Schema
users and editors see (`rayfleet schema`) is generated from these models, never written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rayfleet.errors import SpecError
from rayfleet.specs.base import API_VERSION, DEFAULT_STORAGE, STORAGE_ENV, Metadata, SpecModel
from rayfleet.specs.serve import ModelDeployment
from rayfleet.specs.sweep import SweepJob
from rayfleet.specs.train import TrainJob, TrainJobSpec

Spec = TrainJob | SweepJob | ModelDeployment
KINDS: dict[str, type[SpecModel]] = {
    "TrainJob": TrainJob,
    "SweepJob": SweepJob,
    "ModelDeployment": ModelDeployment,
}

__all__ = [
    "API_VERSION",
    "DEFAULT_STORAGE",
    "KINDS",
    "STORAGE_ENV",
    "Metadata",
    "ModelDeployment",
    "Spec",
    "SpecModel",
    "SweepJob",
    "TrainJob",
    "TrainJobSpec",
    "apply_overrides",
    "json_schema",
    "load_spec",
    "parse_spec",
]


# ---------------------------------------------------------------------------------- loading


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides; values are parsed as YAML scalars (3, true, 1e-3)."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise SpecError(f"--set {item!r}: expected key.path=value, e.g. spec.run.epochs=3")
        keys = path.strip().split(".")
        node = doc
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {key!r} is not a mapping; check the key path")
            node = child
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node[keys[-1]] = value
    return doc


def _format_error(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling (see `rayfleet schema`)"
        elif (
            "input" in e
            and e["type"] not in ("missing", "value_error")
            and not isinstance(e["input"], (dict, list))
        ):
            msg = f"{msg} (got {e['input']!r})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(parts)


def parse_spec(doc: Any, *, source: str = "spec") -> Spec:
    """Validate an already-parsed document into its typed spec, or raise SpecError."""
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: expected a mapping with apiVersion, kind, metadata, spec")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise SpecError(f"{source}: kind: {kind!r} is not known; use one of {', '.join(KINDS)}")
    if doc.get("apiVersion") != API_VERSION:
        raise SpecError(
            f"{source}: apiVersion: {doc.get('apiVersion')!r} is not supported; use {API_VERSION}"
        )
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as err:
        raise SpecError(_format_error(source, err)) from None


# The command that runs each kind, for pointing users at the right one.
COMMANDS = {
    "TrainJob": "rayfleet run",
    "SweepJob": "rayfleet sweep",
    "ModelDeployment": "rayfleet serve",
}


def load_spec(
    path: str | Path, overrides: list[str] | None = None, *, expect: str | None = None
) -> Spec:
    """Read a YAML spec file, apply `--set` overrides, validate. Raises SpecError.

    `expect` names the kind the caller runs; another kind fails with the command to use.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file; check the path") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} is not valid YAML; fix the syntax") from None
    if isinstance(doc, dict) and overrides:
        doc = apply_overrides(doc, overrides)
    spec = parse_spec(doc, source=str(path))
    if expect is not None and spec.kind != expect:
        hint = f"; run it with `{COMMANDS[spec.kind]}`" if spec.kind in COMMANDS else ""
        raise SpecError(f"{path}: is a {spec.kind}, not a {expect}{hint}")
    return spec


def json_schema(kind: str = "TrainJob") -> dict[str, Any]:
    """The JSON Schema of a spec kind, generated from its pydantic model (camelCase keys)."""
    if kind not in KINDS:
        raise SpecError(f"kind {kind!r} is not known; use one of {', '.join(KINDS)}")
    schema = KINDS[kind].model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
