"""`spec.tracking`: where a TrainJob or SweepJob logs its runs (MLflow), shared by both kinds.

Tracking describes who watches a run, not the training itself, so it is not part of
`TrainJob.training_identity()`: turning it on or off never blocks a resume.
"""

from __future__ import annotations

from pydantic import Field, ValidationError, field_validator

from rayfleet.specs.base import SpecModel

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "rayfleet"


class MlflowSpec(SpecModel):
    uri: str | None = Field(
        default=None,
        max_length=2048,
        description=f"MLflow tracking server, e.g. http://127.0.0.1:5000; default "
        f"${TRACKING_URI_ENV} of the driver (neither set: tracking is off).",
    )
    experiment: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description=f"MLflow experiment; default ${EXPERIMENT_ENV}, else {DEFAULT_EXPERIMENT!r}.",
    )

    @field_validator("uri")
    @classmethod
    def _no_env(cls, value: str | None) -> str | None:
        # Like storage URIs: a spec never expands environment variables (see specs.base).
        if value is not None and "$" in value:
            raise ValueError(
                "environment variables are not expanded in specs; write the URI itself, or "
                f"leave uri unset to use ${TRACKING_URI_ENV}"
            )
        return value


class TrackingSpec(SpecModel):
    mlflow: MlflowSpec | None = Field(
        default=None, description="Log params, per-epoch metrics, checkpoints and the record."
    )


def tracking_in(job_spec: dict) -> TrackingSpec | None:
    """The `tracking` section of a stored TrainJob spec, None when absent or not valid."""
    try:
        return TrackingSpec.model_validate(job_spec["tracking"])
    except (KeyError, TypeError, ValidationError):
        return None
