"""Typed job specs: pydantic v2 models for every kind a user writes, and `load_spec`.

Specs are shaped like Kubernetes resources (`apiVersion`, `kind`, `metadata.name`, `spec`) so
the same file can later be applied to a cluster as a custom resource. YAML keys are camelCase
(Kubernetes style); Python attributes are snake_case. Unknown keys are rejected everywhere
(`extra="forbid"`): a typo must fail loudly, not be ignored. The JSON Schema users and editors
see (`rayfleet schema`) is generated from these models, never written by hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from rayfleet.errors import SpecError, StorageError
from rayfleet.storage.uri import StorageURI, parse_uri

API_VERSION = "rayfleet.io/v1alpha1"
DEFAULT_STORAGE = "~/.rayfleet/store"
STORAGE_ENV = "RAYFLEET_STORAGE"

# Kubernetes object names (RFC 1123 label): also used as run names and storage folder names.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENTRYPOINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Model(BaseModel):
    """Base for everything users write: camelCase keys, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


def _check_uri(value: str) -> str:
    """Reject malformed storage URIs at validation time, with the parser's message."""
    if "${" in value:  # resolved later, from the environment
        return value
    try:
        parse_uri(value)
    except StorageError as exc:
        raise ValueError(str(exc)) from None
    return value


def _check_dataset(value: str) -> str:
    """A dataset is a bare name (under `<storage>/datasets/`) or a storage URI."""
    if _DATASET_NAME.match(value) and "/" not in value:
        return value
    return _check_uri(value)


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lowercase letters, digits and '-' "
            "(at most 63 characters, starting and ending with a letter or digit)"
        )
    return value


UriStr = Annotated[str, AfterValidator(_check_uri)]
DatasetStr = Annotated[str, AfterValidator(_check_dataset)]
NameStr = Annotated[str, AfterValidator(_check_name)]


class Metadata(_Model):
    name: NameStr = Field(description="Run name: the storage folder and the Ray Train run name.")
    labels: dict[str, str] = Field(default_factory=dict)


class ModelSpec(_Model):
    """What to train: a built-in recipe, or a user's per-worker loop `module:function`."""

    recipe: str | None = Field(default=None, description="Built-in recipe, e.g. digits-cnn.")
    entrypoint: str | None = Field(
        default=None,
        description="User per-worker loop as module:function; called with the config dict.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the recipe or entrypoint as its config."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSpec:
        if (self.recipe is None) == (self.entrypoint is None):
            raise ValueError("set exactly one of recipe or entrypoint")
        if self.entrypoint is not None and not _ENTRYPOINT.match(self.entrypoint):
            raise ValueError(
                f"entrypoint {self.entrypoint!r} must look like package.module:function"
            )
        if self.recipe is not None:
            from rayfleet.train.recipes import RECIPES

            if self.recipe not in RECIPES:
                raise ValueError(
                    f"unknown recipe {self.recipe!r}; choose one of {', '.join(sorted(RECIPES))}"
                )
        return self


class ScalingSpec(_Model):
    num_workers: int = Field(default=2, ge=1, description="Data-parallel workers (DDP ranks).")
    use_gpu: bool = Field(default=False, description="One GPU per worker unless gpusPerWorker.")
    cpus_per_worker: float = Field(default=1, gt=0)
    gpus_per_worker: float | None = Field(
        default=None, ge=0, description="Defaults to 1 when useGpu, else 0."
    )

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self) -> ScalingSpec:
        if self.gpus_per_worker and not self.use_gpu:
            raise ValueError("gpusPerWorker is set but useGpu is false; set useGpu: true")
        return self

    @property
    def gpus(self) -> float:
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if self.use_gpu else 0.0


class RunSpec(_Model):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1, description="Per worker.")
    learning_rate: float = Field(default=1e-3, gt=0)
    seed: int = Field(default=0, ge=0)
    mixed_precision: Literal["none", "bf16"] = Field(
        default="bf16", description="bf16 autocast; applies on GPU only (CPU runs in fp32)."
    )


class CheckpointSpec(_Model):
    every_epochs: int = Field(default=1, ge=1, description="The last epoch always checkpoints.")
    keep: int = Field(default=3, ge=1, description="Newest checkpoints kept in storage.")


class FailureSpec(_Model):
    max_failures: int = Field(
        default=3, ge=-1, description="Worker-group restarts by Ray Train (-1: unlimited)."
    )
    max_driver_retries: int = Field(
        default=2,
        ge=0,
        description="Relaunches of the whole run after controller or storage errors.",
    )


class TrainJobSpec(_Model):
    model: ModelSpec
    dataset: DatasetStr | None = Field(
        default=None, description="A dataset name under <storage>/datasets/, or a storage URI."
    )
    storage: UriStr | None = Field(
        default=None,
        description=f"s3://bucket/prefix or a path; default ${STORAGE_ENV} or {DEFAULT_STORAGE}",
    )
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    run: RunSpec = Field(default_factory=RunSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)

    @model_validator(mode="after")
    def _recipe_has_data(self) -> TrainJobSpec:
        from rayfleet.train.recipes import RECIPES

        recipe = RECIPES.get(self.model.recipe or "")
        if recipe and recipe.needs_dataset and self.dataset is None:
            raise ValueError(f"recipe {self.model.recipe} reads a dataset; set spec.dataset")
        return self


class TrainJob(_Model):
    """A data-parallel training run (Ray Train TorchTrainer)."""

    api_version: Literal["rayfleet.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TrainJob"]
    metadata: Metadata
    spec: TrainJobSpec

    @property
    def name(self) -> str:
        return self.metadata.name

    def storage_uri(self) -> StorageURI:
        """The storage root: the spec's, else $RAYFLEET_STORAGE, else ~/.rayfleet/store."""
        raw = self.spec.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
        return parse_uri(os.path.expandvars(raw))

    def dataset_uri(self) -> StorageURI | None:
        if self.spec.dataset is None:
            return None
        raw = os.path.expandvars(self.spec.dataset)
        if _DATASET_NAME.match(raw) and "/" not in raw:
            return self.storage_uri().join("datasets", raw)
        return parse_uri(raw)

    def run_uri(self) -> StorageURI:
        return self.storage_uri().join("runs", self.name)


KINDS: dict[str, type[_Model]] = {"TrainJob": TrainJob}


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


def parse_spec(doc: Any, *, source: str = "spec") -> TrainJob:
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


def load_spec(path: str | Path, overrides: list[str] | None = None) -> TrainJob:
    """Read a YAML spec file, apply `--set` overrides, validate. Raises SpecError."""
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
    return parse_spec(doc, source=str(path))


def json_schema(kind: str = "TrainJob") -> dict[str, Any]:
    """The JSON Schema of a spec kind, generated from its pydantic model (camelCase keys)."""
    if kind not in KINDS:
        raise SpecError(f"kind {kind!r} is not known; use one of {', '.join(KINDS)}")
    schema = KINDS[kind].model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
