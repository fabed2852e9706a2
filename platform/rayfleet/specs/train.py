"""`kind: TrainJob`: a data-parallel training run on Ray Train (TorchTrainer, DDP)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field, model_validator

from rayfleet.specs.base import (
    DEFAULT_STORAGE,
    ENTRYPOINT_RE,
    MAX_SEED,
    STORAGE_ENV,
    DatasetStr,
    DriverSpec,
    Resource,
    SpecModel,
    UriStr,
    dataset_location,
    resolve_storage,
)
from rayfleet.specs.scheduling import LifecycleSpec, SchedulingSpec
from rayfleet.specs.tracking import TrackingSpec
from rayfleet.storage.uri import StorageURI
from rayfleet.train.recipes import RECIPES

# The model.config key a user loop reads its epoch count from, by Ray Train convention.
EPOCHS_KEY = "epochs"


class ModelSpec(SpecModel):
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
        if self.entrypoint is not None and not ENTRYPOINT_RE.fullmatch(self.entrypoint):
            raise ValueError(
                f"entrypoint {self.entrypoint!r} must look like package.module:function"
            )
        if self.recipe is not None:
            if self.recipe not in RECIPES:
                raise ValueError(
                    f"unknown recipe {self.recipe!r}; choose one of {', '.join(sorted(RECIPES))}"
                )
        return self


class ScalingSpec(SpecModel):
    num_workers: int = Field(
        default=2,
        ge=1,
        le=4096,
        description="Data-parallel workers (DDP ranks); with minWorkers, the most.",
    )
    min_workers: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Elastic scaling: the fewest workers the run continues on after losing "
        "nodes (it grows back to numWorkers when they return). Unset: a fixed numWorkers.",
    )
    resize_check_seconds: float = Field(
        default=60,
        ge=1,
        le=86_400,
        description="Elastic runs: how often a healthy run checks whether more workers fit "
        "(a resize restarts the worker group from the newest checkpoint).",
    )
    use_gpu: bool = Field(default=False, description="One GPU per worker unless gpusPerWorker.")
    cpus_per_worker: float = Field(default=1, gt=0, le=1024)
    gpus_per_worker: float | None = Field(
        default=None, ge=0, le=64, description="Defaults to 1 when useGpu, else 0."
    )

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self) -> ScalingSpec:
        if self.gpus_per_worker and not self.use_gpu:
            raise ValueError("gpusPerWorker is set but useGpu is false; set useGpu: true")
        return self

    @model_validator(mode="after")
    def _min_within_max(self) -> ScalingSpec:
        if self.min_workers is not None and self.min_workers > self.num_workers:
            raise ValueError(
                f"minWorkers {self.min_workers} is more than numWorkers {self.num_workers}; "
                "numWorkers is the most workers, minWorkers the fewest"
            )
        return self

    @property
    def elastic(self) -> bool:
        """Whether Ray Train may resize the run between minWorkers and numWorkers."""
        return self.min_workers is not None and self.min_workers < self.num_workers

    @property
    def fewest_workers(self) -> int:
        return self.min_workers if self.elastic else self.num_workers

    @property
    def gpus(self) -> float:
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if self.use_gpu else 0.0


class RunSpec(SpecModel):
    epochs: int = Field(default=10, ge=1, le=1_000_000)
    batch_size: int = Field(default=32, ge=1, le=1_048_576, description="Per worker.")
    learning_rate: float = Field(default=1e-3, gt=0, le=1e3)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    mixed_precision: Literal["none", "bf16"] = Field(
        default="bf16", description="bf16 autocast; applies on GPU only (CPU runs in fp32)."
    )


class CheckpointSpec(SpecModel):
    every_epochs: int = Field(
        default=1, ge=1, le=1_000_000, description="The last epoch always checkpoints."
    )
    keep: int = Field(default=3, ge=1, le=10_000, description="Newest checkpoints kept in storage.")


class FailureSpec(SpecModel):
    max_failures: int = Field(
        default=3, ge=-1, le=1000, description="Worker-group restarts by Ray Train (-1: unlimited)."
    )
    max_driver_retries: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Relaunches of the whole run after controller or storage errors.",
    )
    replacement_wait_seconds: float = Field(
        default=600,
        ge=1,
        le=604_800,
        description="How long a run waits for room for its workers (numWorkers, or "
        "minWorkers when elastic), e.g. for a node to replace a lost one, before it fails.",
    )


class TrainJobSpec(SpecModel):
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
    driver: DriverSpec = Field(default_factory=DriverSpec)
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec,
        description="Kueue queue and priority of the rendered RayJob (ignored inside a SweepJob).",
    )
    lifecycle: LifecycleSpec = Field(
        default_factory=LifecycleSpec,
        description="Deadline, retries and clean-up of the rendered RayJob (ignored inside a "
        "SweepJob).",
    )
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec, description="MLflow tracking (not part of the training)."
    )

    @model_validator(mode="after")
    def _recipe_has_data(self) -> TrainJobSpec:

        recipe = RECIPES.get(self.model.recipe or "")
        if recipe and recipe.needs_dataset and self.dataset is None:
            raise ValueError(f"recipe {self.model.recipe} reads a dataset; set spec.dataset")
        return self


class TrainJob(Resource):
    """A data-parallel training run (Ray Train TorchTrainer)."""

    kind: Literal["TrainJob"]
    spec: TrainJobSpec

    def storage_uri(self) -> StorageURI:
        """The storage root: the spec's, else $RAYFLEET_STORAGE, else ~/.rayfleet/store."""
        return resolve_storage(self.spec.storage)

    def dataset_uri(self) -> StorageURI | None:
        if self.spec.dataset is None:
            return None
        return dataset_location(self.spec.dataset, self.spec.storage)

    def run_uri(self) -> StorageURI:
        return self.storage_uri().join("runs", self.name)

    def epochs_planned(self) -> int:
        """How many epochs the loop will run: `run.epochs`, or for a user loop an integer
        `model.config.epochs` (where Ray Train loops usually read it, train_loop_config)."""
        configured = self.spec.model.config.get(EPOCHS_KEY)
        if self.spec.model.entrypoint and isinstance(configured, int) and configured > 0:
            return configured
        return self.spec.run.epochs

    def training_identity(self) -> dict[str, Any]:
        """What defines the training itself: model, data and optimisation (not how long, where,
        or on how many workers). A run resumed under a different identity would continue one
        training with another's weights, so the launcher refuses it unless forced. How long
        is `run.epochs`, or `epochs` in model.config (see epochs_planned)."""
        spec = self.spec.model_dump(mode="json", by_alias=True)
        run = {k: v for k, v in spec["run"].items() if k != "epochs"}
        config = {k: v for k, v in spec["model"]["config"].items() if k != EPOCHS_KEY}
        model = {**spec["model"], "config": config}
        return {"model": model, "dataset": spec["dataset"], "run": run}

    def spec_hash(self) -> str:
        """A short hash of `training_identity()`, stored in every checkpoint's manifest."""
        canonical = json.dumps(self.training_identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
