"""`kind: SweepJob`: a Ray Tune search over a TrainJob, each trial a data-parallel run.

The search space is keyed by dotted paths into the TrainJob's `spec` (`run.learningRate`,
`model.config.channels`), the same paths `--set spec.<path>=...` takes, so a user tunes
exactly the fields they already write. Whether a path exists in the TrainJob, and whether
every value a domain can produce is valid there, is checked when the sweep is prepared
(`rayfleet.tune.space`), before any trial starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rayfleet.specs.base import (
    MAX_SEED,
    DriverSpec,
    Resource,
    SpecModel,
    UriStr,
    resolve_storage,
)
from rayfleet.specs.scheduling import LifecycleSpec, SchedulingSpec
from rayfleet.specs.tracking import TrackingSpec
from rayfleet.specs.train import TrainJobSpec
from rayfleet.storage.uri import StorageURI

_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


class Domain(SpecModel):
    """One searched value: exactly one of choice, grid, uniform, loguniform, randint."""

    choice: list[Any] | None = Field(default=None, description="Sample one of these values.")
    grid: list[Any] | None = Field(
        default=None, description="Try every value (times numSamples); random/grid search."
    )
    uniform: tuple[float, float] | None = Field(default=None, description="[low, high]")
    loguniform: tuple[float, float] | None = Field(
        default=None, description="[low, high], both > 0; sampled uniformly in log space."
    )
    randint: tuple[int, int] | None = Field(
        default=None, description="[low, high): an integer, high excluded."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Domain:
        set_ = [k for k in _KINDS if self[k] is not None]
        if len(set_) != 1:
            raise ValueError(
                "set exactly one of choice, grid, uniform, loguniform, randint"
                + (f" (got {', '.join(set_)})" if set_ else "")
            )
        kind = set_[0]
        if kind in ("choice", "grid") and not self[kind]:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint"):
            low, high = self[kind]
            if not low < high:
                raise ValueError(f"{kind}: low must be below high (got [{low}, {high}])")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: both bounds must be > 0 (got [{low}, {high}])")
        return self

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if self[k] is not None)

    def probe_values(self) -> list[Any]:
        """Values to try against the TrainJob's validation: every listed one, or the bounds."""
        if self.kind in ("choice", "grid"):
            return list(self[self.kind])
        low, high = self[self.kind]
        return [low, high - 1] if self.kind == "randint" else [low, high]


class TrainJobRef(SpecModel):
    """The TrainJob to tune: a path to a TrainJob file, or its `spec` inline."""

    path: str | None = Field(default=None, description="A TrainJob YAML, relative to this file.")
    spec: TrainJobSpec | None = Field(default=None, description="An inline TrainJob spec.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Fixed changes to the TrainJob for every trial, keyed like searchSpace.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TrainJobRef:
        if (self.path is None) == (self.spec is None):
            raise ValueError("set exactly one of path or spec")
        return self


class SearchSpec(SpecModel):
    algorithm: Literal["random", "grid", "tpe"] = Field(
        default="random",
        description="random: sample the space; grid: every combination of grid/choice "
        "values; tpe: Optuna's Tree-structured Parzen Estimator (model-based).",
    )
    seed: int | None = Field(
        default=0, ge=0, le=MAX_SEED, description="Seed of the search; null: not seeded."
    )


class SchedulerSpec(SpecModel):
    type: Literal["asha", "fifo", "median"] = Field(
        default="asha",
        description="asha: async successive halving; fifo: run every trial to the end; "
        "median: stop a trial whose metric is below the median of others at that epoch.",
    )
    grace_period: int = Field(
        default=1, ge=1, le=1_000_000, description="Epochs before a trial may stop."
    )
    reduction_factor: float = Field(
        default=3, gt=1, le=1000, description="ASHA: keep 1/factor per rung."
    )
    min_samples_required: int = Field(
        default=3,
        ge=1,
        le=100_000,
        description="median: trials needed at an epoch before comparing.",
    )


class SweepJobSpec(SpecModel):
    train_job: TrainJobRef
    search_space: dict[str, Domain] = Field(
        description="Dotted paths into the TrainJob spec (run.learningRate, "
        "model.config.channels) mapped to domains."
    )
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: int = Field(
        default=8, ge=1, le=100_000, description="Trials (grid: repeats of the grid)."
    )
    max_concurrent_trials: int | None = Field(
        default=None, ge=1, le=10_000, description="Default: as many trials as the CPUs/GPUs hold."
    )
    metric: str = Field(description="A metric the training reports, e.g. val_accuracy.")
    mode: Literal["max", "min"]
    storage: UriStr | None = Field(
        default=None, description="Where sweeps/<name>/ lives; default: the TrainJob's storage."
    )
    max_trial_failures: int = Field(
        default=0,
        ge=0,
        le=100,
        description="Relaunches of an errored trial before it counts as failed.",
    )
    trial_launch: Literal["auto", "rayTrain"] = Field(
        default="auto",
        description="auto: a trial of one worker (a fixed count, scaling not searched) trains "
        "in its Tune trial's own process, which Tune reuses for the next trial (no Ray Train "
        "controller or worker group to start); larger trials each get a Ray Train run. "
        "rayTrain: every trial its own Ray Train run (worker-group restarts on a lost node, "
        "preemption notices).",
    )
    driver: DriverSpec = Field(default_factory=DriverSpec)
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Kueue queue and priority of the RayJob."
    )
    lifecycle: LifecycleSpec = Field(
        default_factory=LifecycleSpec, description="Deadline, retries and clean-up of the RayJob."
    )
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec,
        description="MLflow: a parent run per sweep, a child per trial; default: the TrainJob's.",
    )

    @model_validator(mode="after")
    def _space_not_empty(self) -> SweepJobSpec:
        if not self.search_space:
            raise ValueError("searchSpace is empty; add at least one key, e.g. run.learningRate")
        return self


class SweepJob(Resource):
    """A hyperparameter sweep (Ray Tune) over data-parallel TrainJob trials."""

    kind: Literal["SweepJob"]
    spec: SweepJobSpec

    def sweep_uri(self, train_storage: str | None) -> StorageURI:
        """`<storage>/sweeps/<name>`: the sweep's storage, else the TrainJob's, else default."""
        return resolve_storage(self.spec.storage or train_storage).join("sweeps", self.name)
