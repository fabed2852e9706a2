"""`evaluation.json`: what an evaluation found, stored beside the checkpoint it scored.

It names the checkpoint and the sha256 of that checkpoint's manifest (the manifest itself is
never changed), so a reader can tell which exact weights the numbers belong to even after the
folder is copied. camelCase keys like the specs and run records; unknown keys refused.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

EVALUATION_FILE = "evaluation.json"
CONFUSION_PNG = "evaluation-confusion.png"
ROC_PNG = "evaluation-roc.png"
DEFAULT_BATCH_SIZE = 256  # rows per forward pass (here, so the CLI needs no numpy to say it)


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class ClassScores(_Doc):
    """One class: precision, recall, F1 and support, and its one-vs-rest ROC AUC (None when
    the split has no example of it, or nothing but it: AUC is then undefined)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int = Field(ge=0)
    roc_auc: float | None = None


class Average(_Doc):
    precision: float
    recall: float
    f1: float
    support: int = Field(ge=0)


class Scores(_Doc):
    """Everything scikit-learn computes from labels and predicted probabilities."""

    examples: int = Field(ge=1)
    accuracy: float
    per_class: list[ClassScores] = Field(min_length=2)
    macro_avg: Average
    weighted_avg: Average
    # Two classes: AUC of the positive class (index 1). More: one-vs-rest, macro and
    # support-weighted; None when a class has no example in the split.
    roc_auc: float | None = None
    roc_auc_weighted: float | None = None
    log_loss: float
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class

    def flat(self, prefix: str) -> dict[str, float]:
        """The headline numbers as `{prefix}accuracy`, ... (MLflow metrics)."""
        values = {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_avg.f1,
            "weighted_f1": self.weighted_avg.f1,
            "macro_precision": self.macro_avg.precision,
            "macro_recall": self.macro_avg.recall,
            "roc_auc": self.roc_auc,
            "log_loss": self.log_loss,
        }
        return {f"{prefix}{k}": v for k, v in values.items() if v is not None}


class Plots(_Doc):
    confusion: str
    roc: str


class Evaluation(_Doc):
    """evaluation.json."""

    checkpoint: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    via: str  # how the checkpoint was chosen: "run digits", "sweep s (best trial t1)", ...
    recipe: str | None = None
    epoch: int | None = None  # as the manifest counts (from 0), like the run record
    dataset: str
    split: str
    evaluated_at: str
    class_names: list[str]
    metrics: Scores
    plots: Plots

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)
