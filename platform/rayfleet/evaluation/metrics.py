"""Classification scores from true labels and predicted class probabilities.

Pure: numpy and scikit-learn's metrics in, typed scores out (no torch, no Ray), so every
number here can be checked by hand on small arrays. scikit-learn computes each metric; this
module only picks the calls and the cases where a metric is undefined:

- precision/recall/F1 of a class nobody predicted (or nobody has) count as 0, as in
  `classification_report(zero_division=0)`, instead of warning;
- ROC AUC needs both outcomes for a class: a class absent from the split has none (None),
  and the one-vs-rest averages are given only when every class is present.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from rayfleet.evaluation.document import Average, ClassScores, Scores


@dataclass(frozen=True)
class RocCurve:
    """One class's one-vs-rest ROC curve (for two classes: the positive class only)."""

    name: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise class probabilities (float64) from logits, stable for large values."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> None:
    k = len(class_names)
    if k < 2:
        raise ValueError(f"need at least 2 classes, got {k}")
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), k):
        raise ValueError(
            f"probabilities are shaped {probabilities.shape}, expected ({len(labels)}, {k})"
        )
    if len(labels) == 0:
        raise ValueError("no examples to score")
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}); found {labels.min()}..{labels.max()}")
    if not np.isfinite(probabilities).all():
        raise ValueError("probabilities contain NaN or infinity (the model's output)")


def _auc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of one binary problem, None when only one outcome occurs."""
    if truth.all() or not truth.any():
        return None
    return float(skm.roc_auc_score(truth, scores))


def score(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> Scores:
    """Accuracy, per-class and averaged precision/recall/F1, ROC AUC, log loss and the
    confusion matrix of `probabilities` ([examples, classes], rows summing to 1) against
    `labels` (class indices)."""
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check(labels, probabilities, class_names)
    k = len(class_names)
    classes = list(range(k))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    per_class = [
        ClassScores(
            name=class_names[c],
            precision=float(precision[c]),
            recall=float(recall[c]),
            f1=float(f1[c]),
            support=int(support[c]),
            roc_auc=_auc(labels == c, probabilities[:, c]),
        )
        for c in classes
    ]

    def average(how: str) -> Average:
        p, r, f, _ = skm.precision_recall_fscore_support(
            labels, predicted, labels=classes, average=how, zero_division=0
        )
        return Average(precision=float(p), recall=float(r), f1=float(f), support=len(labels))

    present = bool(np.isin(classes, labels).all())
    if k == 2:
        auc, auc_weighted = per_class[1].roc_auc, None
    elif present:
        auc, auc_weighted = (
            float(skm.roc_auc_score(labels, probabilities, multi_class="ovr", average=how))
            for how in ("macro", "weighted")
        )
    else:
        auc = auc_weighted = None
    return Scores(
        examples=len(labels),
        accuracy=float(skm.accuracy_score(labels, predicted)),
        per_class=per_class,
        macro_avg=average("macro"),
        weighted_avg=average("weighted"),
        roc_auc=auc,
        roc_auc_weighted=auc_weighted,
        log_loss=float(skm.log_loss(labels, probabilities, labels=classes)),
        confusion_matrix=skm.confusion_matrix(labels, predicted, labels=classes).tolist(),
    )


def roc_curves(
    labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]
) -> list[RocCurve]:
    """The curves to draw: the positive class for two classes, else one per class present
    (one-vs-rest); a class with only one outcome in the split has no curve."""
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check(labels, probabilities, class_names)
    wanted = [1] if len(class_names) == 2 else range(len(class_names))
    curves = []
    for c in wanted:
        truth = labels == c
        auc = _auc(truth, probabilities[:, c])
        if auc is None:
            continue
        fpr, tpr, _ = skm.roc_curve(truth, probabilities[:, c])
        curves.append(RocCurve(class_names[c], fpr, tpr, auc))
    return curves
