"""`spec.gcsFaultTolerance` of a ModelDeployment: the head's state survives a head restart.

Why on ModelDeployment only: a RayService's replicas live on worker pods and keep answering
while a restarted head reloads the GCS, so serving rides out a head failure; a TrainJob's or
SweepJob's driver runs on its RayJob's head and dies with it whatever the GCS keeps, and
`lifecycle.backoffLimit` (a retry that resumes from storage) is what covers that.

Two backends, as KubeRay 1.7 offers them (`RayCluster.spec.gcsFaultToleranceOptions`):

- `redis` (KubeRay's supported path): an external Redis you run; its credential comes from an
  existing Secret (never a literal in a spec).
- `rocksdb` (alpha in KubeRay 1.7 and Ray): the GCS keeps its state in RocksDB on a
  PersistentVolumeClaim mounted on the head, so there is no Redis to run. The KubeRay operator
  must run with the feature gate `GCSFaultToleranceEmbeddedStorage=true`, or it ignores the
  backend (`rayfleet doctor` checks the gate).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from rayfleet.specs.base import SpecModel

EMBEDDED_STORAGE_GATE = "GCSFaultToleranceEmbeddedStorage"
_HOST_PORT_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?:[0-9]{1,5}")
_QUANTITY_RE = re.compile(r"[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")


class SecretKeyRef(SpecModel):
    name: str = Field(min_length=1, max_length=253, description="Secret in the same namespace.")
    key: str = Field(default="password", min_length=1, description="Key of the value in it.")


class RedisSpec(SpecModel):
    address: str = Field(
        description="host:port of the Redis (e.g. redis.ray-ft.svc:6379); the rendered "
        "NetworkPolicy lets the head reach that port."
    )
    password_secret: SecretKeyRef | None = Field(
        default=None, description="The Redis password, from an existing Secret."
    )
    namespace: str | None = Field(
        default=None,
        description="Key prefix in Redis so clusters can share one (KubeRay's "
        "externalStorageNamespace); unset: the RayCluster's UID.",
    )

    @model_validator(mode="after")
    def _address_is_host_port(self) -> RedisSpec:
        port = self.address.rsplit(":", 1)[-1]
        if not _HOST_PORT_RE.fullmatch(self.address) or not 0 < int(port) < 65536:
            raise ValueError(
                f"redis.address {self.address!r} is not host:port (e.g. redis.ray-ft.svc:6379)"
            )
        return self


class EmbeddedStorageSpec(SpecModel):
    """The head's volume for RocksDB: an operator-made claim (size, class) or your own."""

    size: str = Field(default="1Gi", description="Size of the claim KubeRay creates.")
    storage_class_name: str | None = Field(
        default=None, description="StorageClass of that claim; unset: the cluster's default."
    )
    claim_name: str | None = Field(
        default=None,
        description="An existing PersistentVolumeClaim to use instead (you own its "
        "lifecycle; the way to keep the state across a RayService upgrade).",
    )
    retain: bool = Field(
        default=False,
        description="Keep the claim KubeRay creates when the cluster is deleted.",
    )

    @model_validator(mode="after")
    def _one_way_to_get_a_volume(self) -> EmbeddedStorageSpec:
        if not _QUANTITY_RE.fullmatch(self.size):
            raise ValueError(f"storage.size {self.size!r} is not a quantity (e.g. 1Gi)")
        if self.claim_name and ("storage_class_name" in self.model_fields_set or self.retain):
            raise ValueError(
                "storage.claimName names your own claim; storageClassName and retain only "
                "apply to the claim KubeRay creates: set one or the other"
            )
        return self


class GcsFaultToleranceSpec(SpecModel):
    backend: Literal["redis", "rocksdb"] = Field(
        description="redis: an external Redis (supported); rocksdb: a volume on the head "
        f"(alpha; the KubeRay operator needs --feature-gates={EMBEDDED_STORAGE_GATE}=true)."
    )
    redis: RedisSpec | None = Field(default=None, description="For backend redis.")
    storage: EmbeddedStorageSpec | None = Field(default=None, description="For backend rocksdb.")

    @model_validator(mode="after")
    def _settings_match_the_backend(self) -> GcsFaultToleranceSpec:
        if self.backend == "redis" and self.redis is None:
            raise ValueError("backend redis needs redis.address (host:port of your Redis)")
        if self.backend == "redis" and self.storage is not None:
            raise ValueError("storage is for backend rocksdb; backend redis keeps state in Redis")
        if self.backend == "rocksdb" and self.redis is not None:
            raise ValueError("redis is for backend redis; backend rocksdb needs no Redis")
        return self

    def redis_port(self) -> int | None:
        return int(self.redis.address.rsplit(":", 1)[1]) if self.redis else None

    def kuberay_options(self) -> dict:
        """`RayCluster.spec.gcsFaultToleranceOptions` for KubeRay 1.7."""
        if self.redis is not None:
            options: dict = {"backend": "redis", "redisAddress": self.redis.address}
            if self.redis.password_secret:
                ref = self.redis.password_secret
                options["redisPassword"] = {
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}
                }
            if self.redis.namespace:
                options["externalStorageNamespace"] = self.redis.namespace
            return options
        storage = self.storage or EmbeddedStorageSpec()
        if storage.claim_name:
            volume: dict = {"claimName": storage.claim_name}
        else:
            volume = {
                "size": storage.size,
                "deletionPolicy": "Retain" if storage.retain else "DeleteWithCluster",
            }
            if storage.storage_class_name:
                volume["storageClassName"] = storage.storage_class_name
        return {"backend": "rocksdb", "storage": volume}
