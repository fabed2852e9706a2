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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from rayfleet.errors import StorageError
from rayfleet.storage.uri import StorageURI, parse_uri

API_VERSION = "rayfleet.io/v1alpha1"
DEFAULT_STORAGE = "~/.rayfleet/store"
STORAGE_ENV = "RAYFLEET_STORAGE"

# metadata.name is a run name, a storage folder and a Kubernetes object name, so one rule
# holds everywhere (validate, run, render, the CRD): a DNS-1035 label (a letter first) of at
# most 47 characters, because KubeRay names a RayJob's RayCluster `<name>-<5 chars>` and
# needs that to fit its 53-character limit. Patterns are used with fullmatch (`$` would
# accept a trailing newline).
MAX_NAME = 47
NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
ENTRYPOINT_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# The largest seed numpy, torch and Python's random all accept.
MAX_SEED = 2**32 - 1


class SpecModel(BaseModel):
    """Base for everything users write: camelCase keys, unknown keys rejected."""

    # allow_inf_nan=False: an `inf` learning rate or CPU count would validate here and fail
    # later inside the workers, possibly restarting forever.
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        allow_inf_nan=False,
    )


def _check_uri(value: str) -> str:
    """Reject malformed storage URIs at validation time, with the parser's message.

    Environment variables are never expanded in a spec's fields: a spec can come from
    someone with fewer rights than the process that runs it (a ModelDeployment author and
    the serving pod, say), and `${RAY_AUTH_TOKEN}` in a URI would leak the pod's secrets
    into paths, logs and error messages. The one documented indirection is an unset
    `storage`, which means $RAYFLEET_STORAGE of the process that runs the spec.
    """
    if "$" in value:
        raise ValueError(
            "environment variables are not expanded in specs; write the URI itself "
            f"(leave storage unset to use ${STORAGE_ENV})"
        )
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
    if len(value) > MAX_NAME or not NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lowercase letters, digits and '-' "
            f"(at most {MAX_NAME} characters, starting with a letter, ending with a letter "
            "or digit)"
        )
    return value


UriStr = Annotated[str, AfterValidator(_check_uri)]
DatasetStr = Annotated[str, AfterValidator(_check_dataset)]
# The JSON Schema (and so the CRD) carries the same rule, so an API server refuses a bad
# name on apply; the validator gives the one-line message locally.
NameStr = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": f"^{NAME_RE.pattern}$", "maxLength": MAX_NAME}),
]


class Metadata(SpecModel):
    name: NameStr = Field(description="Run name: the storage folder and the Ray Train run name.")
    labels: dict[str, str] = Field(default_factory=dict)


class DriverSpec(SpecModel):
    """What the job's driver process reserves on a cluster (`rayfleet submit`'s entrypoint,
    a RayJob's entrypointNumCpus/Gpus). The driver only coordinates: Ray Train and Tune
    reserve the workers' CPUs and GPUs themselves (spec.scaling), so the default is none,
    and a cluster exactly as big as the workers can run the job."""

    cpus: float = Field(default=0, ge=0, le=1024, description="CPUs reserved for the driver.")
    gpus: float = Field(default=0, ge=0, le=64, description="GPUs reserved for the driver.")


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
    """The storage root: the spec's, else $RAYFLEET_STORAGE, else ~/.rayfleet/store.

    Nothing is expanded: the spec's value is literal (validated), and RAYFLEET_STORAGE is
    the running process's own setting, not something a spec author controls."""
    return parse_uri(raw or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)


def is_dataset_name(raw: str) -> bool:
    return bool(_DATASET_NAME.fullmatch(raw))


def dataset_location(raw: str, storage: StorageURI | str | None) -> StorageURI:
    """Where dataset `raw` lives: a name under the storage root's datasets/ (`storage`: a
    root, or the raw value `resolve_storage` takes), anything else a URI of its own."""
    if not is_dataset_name(raw):
        return parse_uri(raw)
    root = storage if isinstance(storage, StorageURI) else resolve_storage(storage)
    return root.join("datasets", raw)
