"""Shared pieces of every spec kind: the strict camelCase base model, names, URIs, metadata.

Specs are shaped like Kubernetes resources (`apiVersion`, `kind`, `metadata.name`, `spec`) so
the same file can later be applied to a cluster as a custom resource. YAML keys are camelCase
(Kubernetes style); Python attributes are snake_case. Unknown keys are rejected everywhere
(`extra="forbid"`): a typo must fail loudly, not be ignored.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from rayfleet.errors import StorageError
from rayfleet.storage.uri import StorageURI, parse_uri

API_VERSION = "rayfleet.io/v1alpha1"
DEFAULT_STORAGE = "~/.rayfleet/store"
STORAGE_ENV = "RAYFLEET_STORAGE"

# Kubernetes object names (RFC 1123 label): also used as run names and storage folder names.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SpecModel(BaseModel):
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
    if is_dataset_name(value):
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


class Metadata(SpecModel):
    name: NameStr = Field(description="Run name: the storage folder and the Ray Train run name.")
    labels: dict[str, str] = Field(default_factory=dict)


class DriverSpec(SpecModel):
    """What the job's driver process reserves on a cluster (`rayfleet submit`'s entrypoint,
    a RayJob's entrypointNumCpus/Gpus). The driver only coordinates: Ray Train and Tune
    reserve the workers' CPUs and GPUs themselves (spec.scaling), so the default is none,
    and a cluster exactly as big as the workers can run the job."""

    cpus: float = Field(default=0, ge=0, description="CPUs reserved for the driver.")
    gpus: float = Field(default=0, ge=0, description="GPUs reserved for the driver.")


class Resource(SpecModel):
    """A Kubernetes-shaped spec: `apiVersion`, `kind`, `metadata`, `spec` (set by each kind)."""

    api_version: Literal["rayfleet.io/v1alpha1"] = Field(alias="apiVersion")
    kind: str  # narrowed to its Literal by each kind; declared here to keep the YAML order
    metadata: Metadata

    @property
    def name(self) -> str:
        """metadata.name: the run, sweep or Serve application name."""
        return self.metadata.name


def resolve_storage(raw: str | None) -> StorageURI:
    """The storage root: the spec's, else $RAYFLEET_STORAGE, else ~/.rayfleet/store."""
    raw = raw or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    return parse_uri(os.path.expandvars(raw))


def is_dataset_name(raw: str) -> bool:
    return bool(_DATASET_NAME.match(raw)) and "/" not in raw
