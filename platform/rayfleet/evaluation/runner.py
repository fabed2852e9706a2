"""Run an evaluation: resolve and check (source), load the verified weights, score the split
in batches on CPU, draw the figures, store the results beside the checkpoint, and attach them
to the run's MLflow run when it was tracked.

Storage is written only after everything is computed and drawn: the two PNGs first, then
evaluation.json (which names them) last, each in one atomic write. Bad input is refused before
any of it, so nothing is written; a storage failure part-way leaves whole files only (new
PNGs beside the previous evaluation.json at worst), and the checkpoint's own files and
manifest are never touched.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayfleet import plots, tracking
from rayfleet.data.shards import Shard, read_shard
from rayfleet.errors import DatasetError, WorkFailedError
from rayfleet.evaluation import metrics
from rayfleet.evaluation.document import (
    CONFUSION_PNG,
    DEFAULT_BATCH_SIZE,
    EVALUATION_FILE,
    ROC_PNG,
    Evaluation,
    Plots,
    Scores,
)
from rayfleet.evaluation.source import (
    Checkpoint,
    EvaluationError,
    RunFacts,
    check_fit,
    dataset_uri,
    read_manifest,
    resolve,
    run_facts,
)
from rayfleet.serve.loading import load_model  # torch: only once the input is sound
from rayfleet.storage import documents
from rayfleet.storage.filesystem import filesystem_for, write_bytes
from rayfleet.storage.uri import StorageURI

PLOT_FILES = {"confusion": CONFUSION_PNG, "roc": ROC_PNG}  # Plots field -> file name


@dataclass
class Outcome:
    """What `evaluate` did: the stored document, where it went, whether MLflow has it."""

    evaluation: Evaluation
    uri: str
    mlflow_attached: bool
    skipped: list[str]


def predict_batches(predict: Callable[[np.ndarray], np.ndarray], features, batch_size: int):
    """Logits of every row, `batch_size` rows per forward pass."""
    parts = [predict(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    return np.concatenate(parts, axis=0)


@dataclass
class Prepared:
    """A checkpoint and the split to score it on, every input check passed."""

    checkpoint: Checkpoint
    facts: RunFacts
    dataset: StorageURI
    split: str
    class_names: list[str]
    shard: Shard


def prepare(
    *, run, sweep, checkpoint, storage, dataset, split: str, note: Callable[[str], None]
) -> Prepared:
    """Resolve, check and read everything an evaluation needs, before any model is loaded:
    bad input stops here (EvaluationError, DatasetError, ModelLoadError: exit code 2)."""
    ckpt = resolve(run=run, sweep=sweep, checkpoint=checkpoint, storage=storage)
    for line in ckpt.skipped:
        note(line)
    facts = run_facts(ckpt, storage)
    data_uri = dataset_uri(dataset, facts, ckpt, storage)
    info = check_fit(data_uri, split, ckpt)
    shard = read_shard(
        filesystem_for(data_uri), data_uri, split, 0, 1, info.feature_shape, equal=False,
        feature_dtype=info.feature_dtype,
    )  # fmt: skip
    if len(shard) == 0:
        raise DatasetError(f"dataset {data_uri}: split {split!r} has no rows")
    if shard.labels.min() < 0 or shard.labels.max() >= info.num_classes:
        raise DatasetError(
            f"dataset {data_uri}: split {split!r} has labels outside [0, {info.num_classes}); "
            "re-import the dataset"
        )
    names = list(info.class_names or [str(i) for i in range(info.num_classes)])
    return Prepared(ckpt, facts, data_uri, split, names, shard)


def probabilities_of(job: Prepared, batch_size: int) -> np.ndarray:
    """Class probabilities of every row from the checkpoint's verified weights."""

    ckpt = job.checkpoint
    model = load_model(ckpt.uri, name="evaluate")
    if read_manifest(ckpt.uri)[1] != ckpt.manifest_sha256:
        raise WorkFailedError(
            f"checkpoint {ckpt.uri}: its manifest changed while it was being evaluated; "
            "evaluate it again"
        )
    # Writable and contiguous: torch warns on (and may not share) Arrow's read-only buffers.
    features = np.require(job.shard.features, model.signature.dtype, ["C", "W"])
    probabilities = metrics.softmax(predict_batches(model.predict, features, batch_size))
    if not np.isfinite(probabilities).all():
        raise WorkFailedError(
            f"checkpoint {ckpt.uri}: the model outputs NaN or infinity on {job.dataset} {job.split}"
        )
    return probabilities


def figures(job: Prepared, scores: Scores, probabilities: np.ndarray) -> dict[str, bytes]:
    """The confusion matrix and ROC curves as PNG bytes, by file name."""
    title = f"{_short(job.checkpoint.uri)}: {job.dataset.key.rsplit('/', 1)[-1]} {job.split}"
    curves = metrics.roc_curves(job.shard.labels, probabilities, job.class_names)
    auc = "ROC" if scores.roc_auc is None else f"ROC AUC {scores.roc_auc:.4f}"
    if len(job.class_names) > 2:
        auc += " (one-vs-rest)"
    confusion = plots.confusion_figure(
        scores.confusion_matrix, job.class_names,
        title=f"{title}\naccuracy {scores.accuracy:.4f}, {scores.examples} examples",
    )  # fmt: skip
    return {
        CONFUSION_PNG: plots.png_bytes(confusion),
        ROC_PNG: plots.png_bytes(plots.roc_figure(curves, title=f"{title}\n{auc}")),
    }


def store(doc: Evaluation, out: StorageURI, pngs: dict[str, bytes]) -> StorageURI:
    """The PNGs, then evaluation.json (which names them) last; each write is atomic."""
    fs = filesystem_for(out)
    for name, data in pngs.items():
        write_bytes(fs, out.join(name).fs_path, data)
    body = doc.to_json()

    def replace(current: dict) -> None:
        current.clear()
        current.update(body)

    uri = out.join(EVALUATION_FILE)
    documents.update(uri, replace)
    return uri


def evaluate(
    *,
    run: str | None = None,
    sweep: str | None = None,
    checkpoint: str | None = None,
    storage: str | None = None,
    dataset: str | None = None,
    split: str = "val",
    batch_size: int = DEFAULT_BATCH_SIZE,
    note: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Evaluate one verified checkpoint on a dataset split; see the module docstring."""
    if batch_size < 1:
        raise EvaluationError(f"--batch-size {batch_size}: use a positive number of rows")
    job = prepare(
        run=run, sweep=sweep, checkpoint=checkpoint, storage=storage, dataset=dataset,
        split=split, note=note,
    )  # fmt: skip
    ckpt = job.checkpoint
    note(f"evaluating {ckpt.uri} ({ckpt.via}) on {job.dataset} {split}: {len(job.shard)} rows")
    probabilities = probabilities_of(job, batch_size)
    scores = metrics.score(job.shard.labels, probabilities, job.class_names)
    pngs = figures(job, scores, probabilities)
    epoch = ckpt.meta.get("epoch")
    doc = Evaluation(
        checkpoint=str(ckpt.uri),
        manifest_sha256=ckpt.manifest_sha256,
        via=ckpt.via,
        recipe=ckpt.meta.get("recipe"),
        epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        dataset=str(job.dataset),
        split=split,
        evaluated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        class_names=job.class_names,
        metrics=scores,
        plots=Plots(**{k: str(ckpt.uri.join(n)) for k, n in PLOT_FILES.items()}),
    )
    uri = store(doc, ckpt.uri, pngs)
    attached = _attach(doc, ckpt.run_uri, job.facts.tracking, split, pngs)
    return Outcome(doc, str(uri), attached, ckpt.skipped)


def _short(uri) -> str:
    """`run/checkpoint_e000003-...` for a title: the last two parts of the path."""
    return "/".join(str(uri).rstrip("/").rsplit("/", 2)[-2:])


def _attach(doc: Evaluation, run_uri, spec, split: str, pngs: dict[str, bytes]) -> bool:
    """The evaluation (document, headline metrics, PNGs) on the run's MLflow run, when
    tracking is configured for it; never fails the evaluation for MLflow's sake."""
    if tracking.target_for(spec) is None:
        return False
    with tempfile.TemporaryDirectory(prefix="rayfleet-eval-") as tmp:
        files = []
        for name, data in pngs.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            files.append(path)
        return tracking.attach(
            str(run_uri), doc.to_json(), EVALUATION_FILE, spec=spec,
            metrics=doc.metrics.flat(f"eval_{split}_"), files=files,
        )  # fmt: skip
