"""`rayfleet compress --method distill`: train a smaller student of the same recipe on the
teacher's soft labels, as an ordinary data-parallel TrainJob, and stamp its lineage.

Why a TrainJob and not a loop here: distillation is training, and rayfleet's launcher already
gives training everything it needs (DDP over the run's workers, verified checkpoints, a run
record, resume after a lost worker, MLflow tracking). The student run is the teacher's stored
TrainJob with three changes: the name (`--to`), a smaller `model.config` (the student), and a
`distill` config key naming the teacher checkpoint and the loss settings, which the shared
classifier loop (`train.recipes.common.train_classifier`) takes out and turns into a frozen
teacher (`train.recipes.distill`).

Two steps, so every refusal comes before anything is written: `prepare_distill` checks the
request and builds the student's TrainJob (no torch, no Ray); `run_distill` trains it, then
loads student and teacher through serving's loader, evaluates both on the val split and
rewrites the final checkpoint's manifest with the lineage (meta `compression`, method
`distill`). The student's weights are an ordinary fp32 checkpoint of the smaller config, so
`rayfleet serve` loads it as a plain model; only the manifest is replaced (one atomic PUT,
listing the same verified files), so no reader ever sees a checkpoint that does not verify.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayfleet import record
from rayfleet.compress.lineage import (
    META_KEY,
    Compression,
    Distillation,
    Evaluation,
)
from rayfleet.compress.methods import CompressError
from rayfleet.errors import SpecError, WorkFailedError
from rayfleet.lazy import lazy
from rayfleet.serve.loading import fetch_verified, load_verified
from rayfleet.specs import parse_spec
from rayfleet.storage.checkpoints import MANIFEST, newest_verified, verify
from rayfleet.storage.filesystem import exists, filesystem_for, write_bytes
from rayfleet.storage.uri import StorageURI
from rayfleet.train.recipes import RECIPES

compress_job = lazy("rayfleet.compress.job")  # imports this module: a cycle, broken at use
launcher = lazy("rayfleet.train.launcher")  # Ray: only when the student trains

# The model.config key that carries the teacher settings into the workers.
DISTILL_KEY = "distill"
DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.7
# Width keys divide by this (the student has ~1/16 of a conv/linear layer's weights).
SHRINK_FACTOR = 4
MIN_WIDTH = 4
# Recipe -> {width key: the recipe's own default for it}: what a default student shrinks.
SHRINK: dict[str, dict[str, int]] = {
    "digits-cnn": {"channels": 32, "hidden": 128},
    "image-cnn": {"width": 32},
    "text-lstm": {"embed": 64, "hidden": 64},
    "tabular-mlp": {"hidden": 64},
}
# Recipes whose loop is the shared classifier loop, the one that takes a teacher.
TEACHER_LOOP = ("digits-cnn", "image-cnn", "tabular-mlp", "text-lstm")


@dataclass(frozen=True)
class DistillPlan:
    """A checked distillation request: everything `run_distill` needs, nothing written yet."""

    run: str
    to: str
    source: StorageURI  # the teacher checkpoint
    dest: StorageURI  # runs/<to>
    dataset: StorageURI
    recipe: str
    teacher_config: dict[str, Any]
    student_config: dict[str, Any]
    temperature: float
    alpha: float
    job: Any  # rayfleet.specs.train.TrainJob
    overwrite: bool = False


# ------------------------------------------------------------------- checks (no torch)


# A student trains this many times the teacher's epochs unless --epochs says otherwise: a
# quarter-width digits-cnn was 0.042 below its teacher after the teacher's 12 epochs and
# 0.008 below after 36 (tests/benchmarks/compress.py, one run), inside the 0.01 target.
STUDENT_EPOCHS_FACTOR = 3


def parse_student_set(items: Iterable[str], recipe: str) -> dict[str, Any]:
    """`--student-set key=value` items as a dict (values read as YAML scalars, like --set);
    CompressError for a malformed item or a key the recipe does not read."""
    import yaml

    known = RECIPES[recipe].config_keys
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CompressError(
                f"--student-set {item!r}: expected key=value, e.g. --student-set hidden=32"
            )
        if key not in known:
            raise CompressError(
                f"--student-set {key}: recipe {recipe} has no config key {key!r}; use one of "
                f"{', '.join(known)}"
            )
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


def student_config(
    recipe: str, teacher: dict[str, Any], overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The teacher's config with its width keys divided by SHRINK_FACTOR (never below
    MIN_WIDTH), then `overrides` (--student-set) on top. CompressError when the recipe has no
    shrink rule and nothing is overridden, or when the result is the teacher's config."""
    overrides = dict(overrides or {})
    rule = SHRINK.get(recipe)
    if rule is None and not overrides:
        raise CompressError(
            f"recipe {recipe}: no default student for it (no known width keys to shrink); "
            "pass --student-set key=value for the smaller model"
        )
    student = dict(teacher)
    for key, default in (rule or {}).items():
        if key not in overrides:
            student[key] = max(MIN_WIDTH, int(teacher.get(key, default)) // SHRINK_FACTOR)
    student.update(overrides)
    if _effective(recipe, student) == _effective(recipe, teacher):
        raise CompressError(
            f"recipe {recipe}: the student config {student} builds the teacher's model again; "
            "pass --student-set with smaller widths"
        )
    return student


def _effective(recipe: str, config: dict[str, Any]) -> dict[str, Any]:
    """A config with the shrink rule's defaults filled in (so {} equals {hidden: 64})."""
    return {**SHRINK.get(recipe, {}), **config}


def check_settings(
    temperature: float, alpha: float, epochs: int | None, workers: int | None
) -> None:
    if not temperature > 0:
        raise CompressError(f"--temperature {temperature}: must be above 0 (default 4)")
    if not 0 <= alpha <= 1:
        raise CompressError(f"--alpha {alpha}: must be between 0 and 1 (default 0.7)")
    if epochs is not None and epochs < 1:
        raise CompressError(f"--epochs {epochs}: must be at least 1")
    if workers is not None and workers < 1:
        raise CompressError(f"--workers {workers}: must be at least 1")


def check_distill_only(
    method: str,
    *,
    student_set: Iterable[str] = (),
    temperature: float | None = None,
    alpha: float | None = None,
    epochs: int | None = None,
    workers: int | None = None,
) -> None:
    """CompressError when a distill-only flag comes with another method (it would be ignored)."""
    if method == "distill":
        return
    given = [
        flag
        for flag, value in (
            ("--student-set", list(student_set) or None),
            ("--temperature", temperature),
            ("--alpha", alpha),
            ("--epochs", epochs),
            ("--workers", workers),
        )
        if value is not None
    ]
    if given:
        raise CompressError(
            f"{', '.join(given)}: only --method distill reads "
            f"{'it' if len(given) == 1 else 'them'}; drop {'it' if len(given) == 1 else 'them'} "
            f"or use --method distill"
        )


def _student_job(
    stored: dict[str, Any],
    *,
    to: str,
    storage: StorageURI,
    dataset: StorageURI,
    recipe: str,
    config: dict[str, Any],
    epochs: int | None,
    workers: int | None,
):
    """The teacher's stored TrainJob document, renamed and given the student config."""

    doc = json.loads(json.dumps(stored))  # a deep copy of plain data
    doc["metadata"] = {**(doc.get("metadata") or {}), "name": to}
    spec = doc.setdefault("spec", {})
    spec["model"] = {"recipe": recipe, "config": config}
    spec["dataset"] = str(dataset)
    spec["storage"] = str(storage)
    run_section = spec.setdefault("run", {})
    if epochs is None and isinstance(run_section.get("epochs"), int):
        epochs = STUDENT_EPOCHS_FACTOR * run_section["epochs"]
    if epochs is not None:
        run_section["epochs"] = epochs
    if workers is not None:
        scaling = spec.setdefault("scaling", {})
        scaling["numWorkers"] = workers
        if (scaling.get("minWorkers") or 0) > workers:
            scaling["minWorkers"] = None
    try:
        return parse_spec(doc, source=f"the student TrainJob {to}")
    except SpecError as exc:
        raise CompressError(f"--to {to}: {exc}") from None


def prepare_distill(
    run: str,
    *,
    storage: StorageURI,
    to: str,
    overwrite: bool = False,
    dataset: str | None = None,
    student_set: Iterable[str] = (),
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    epochs: int | None = None,
    workers: int | None = None,
) -> DistillPlan:
    """Check a distillation request and build the student's TrainJob; writes nothing.

    Raises CompressError (exit 2) for bad --to, a run with no verified checkpoint or no run
    record, a quantized source, a user-entrypoint run, a recipe with no teacher hook or no
    known student, bad --student-set / --temperature / --alpha, or an existing --to."""
    check_settings(temperature, alpha, epochs, workers)
    run_uri, dest, ref, source = compress_job.fp32_source(run, to, storage, then="distill from")
    fs = filesystem_for(run_uri)
    stored = (record.read(fs, run_uri) or {}).get("spec") or {}
    model = (stored.get("spec") or {}).get("model") or {}
    if model.get("entrypoint") or not ref.meta.get("recipe"):
        what = model.get("entrypoint") or "a user loop"
        raise CompressError(
            f"run {run}: trained {what}, not a built-in recipe; distill knows how to build a "
            f"smaller model only for the recipes {', '.join(TEACHER_LOOP)}"
        )
    recipe = str(ref.meta["recipe"])
    if recipe not in TEACHER_LOOP:
        raise CompressError(
            f"run {run}: recipe {recipe} does not train with the classifier loop that takes a "
            f"teacher; distill runs of {', '.join(TEACHER_LOOP)}, or use another --method"
        )
    if not model:
        raise CompressError(
            f"run {run}: no run record (the TrainJob that trained it) under {run_uri}; distill "
            "retrains that job with a smaller model, so the run must come from `rayfleet run`"
        )
    teacher_config = {k: v for k, v in (model.get("config") or {}).items() if k != DISTILL_KEY}
    student = student_config(recipe, teacher_config, parse_student_set(student_set, recipe))
    compress_job.check_destination(filesystem_for(dest), dest, overwrite=overwrite)
    data = compress_job.resolve_dataset(storage, run_uri, dataset)
    if data is None:
        raise CompressError(
            f"run {run}: its record names no dataset to train the student on; pass --dataset "
            "NAME_OR_URI"
        )
    settings = {"teacher": str(source), "temperature": float(temperature), "alpha": float(alpha)}
    job = _student_job(
        stored,
        to=to,
        storage=storage,
        dataset=data,
        recipe=recipe,
        config={**student, DISTILL_KEY: settings},
        epochs=epochs,
        workers=workers,
    )
    return DistillPlan(
        run=run,
        to=to,
        source=source,
        dest=dest,
        dataset=data,
        recipe=recipe,
        teacher_config=teacher_config,
        student_config=student,
        temperature=float(temperature),
        alpha=float(alpha),
        job=job,
        overwrite=overwrite,
    )


# ----------------------------------------------------------------------------- the work


def run_distill(plan: DistillPlan, *, on_event: Callable[[dict], None] | None = None):
    """Train the student TrainJob, then evaluate it against its teacher and stamp the
    lineage into its final checkpoint's manifest. Returns a compress.job.CompressResult."""
    fs = filesystem_for(plan.dest)
    if plan.overwrite and exists(fs, plan.dest.fs_path):
        # Again: a deployment may have pinned it since the plan was made.
        compress_job.check_destination(fs, plan.dest, overwrite=True)
        fs.delete_dir(plan.dest.fs_path)
    launcher.run_train_job(plan.job, on_event=on_event)
    ref, skipped = newest_verified(fs, plan.dest.fs_path)
    if ref is None:
        detail = f" ({skipped[0]})" if skipped else ""
        raise WorkFailedError(
            f"distill {plan.to}: the student run left no verified checkpoint{detail}; rerun "
            "with --overwrite"
        )
    target = plan.dest.at(ref.path)
    with tempfile.TemporaryDirectory(prefix="rayfleet-distill-") as tmp:
        lineage = _stamp(plan, target, Path(tmp))
    return compress_job.CompressResult(checkpoint=target, source=plan.source, compression=lineage)


def _stamp(plan: DistillPlan, target: StorageURI, tmp: Path) -> Compression:
    """Evaluate teacher and student on the val split (both loaded as serving loads them) and
    replace the student checkpoint's manifest with one whose meta carries the lineage."""
    import torch

    src_dir, out_dir = tmp / "teacher", tmp / "student"
    teacher_manifest = fetch_verified(plan.source, src_dir)
    source_sha = hashlib.sha256((src_dir / MANIFEST).read_bytes()).hexdigest()
    teacher = load_verified(src_dir, teacher_manifest, str(plan.source), name=plan.run)
    manifest = fetch_verified(target, out_dir)
    student = load_verified(out_dir, manifest, str(target), name=plan.to)
    val = compress_job._read_split(plan.dataset, "val", teacher.signature.shape, f"run {plan.run}")
    labels = val.labels
    evaluation = Evaluation(
        dataset=str(plan.dataset),
        split="val",
        rows=len(labels),
        source_accuracy=compress_job.accuracy(teacher, val.features, labels),
        accuracy=compress_job.accuracy(student, val.features, labels),
    )
    spec = plan.job.spec
    lineage = Compression(
        method="distill",
        source=str(plan.source),
        source_manifest_sha256=source_sha,
        source_weights_bytes=compress_job._serialized_size(teacher.module.state_dict()),
        weights_bytes=compress_job._serialized_size(student.module.state_dict()),
        distillation=Distillation(
            student_config=plan.student_config,
            teacher_config=plan.teacher_config,
            temperature=plan.temperature,
            alpha=plan.alpha,
            epochs=spec.run.epochs,
            workers=spec.scaling.num_workers,
        ),
        evaluation=evaluation,
        torch_version=torch.__version__,
    )
    meta = {**manifest.get("meta", {}), META_KEY: lineage.to_meta()}
    stamped = {**manifest, "meta": meta}  # the same verified file list, a new meta
    fs = filesystem_for(target)
    path = f"{target.fs_path}/{MANIFEST}"
    write_bytes(fs, path, json.dumps(stamped, indent=1, sort_keys=True).encode())
    if not (check := verify(fs, target.fs_path)).ok:
        raise WorkFailedError(f"distill {plan.to}: {target} does not verify after the lineage "
                              f"was written ({check.reason}); rerun with --overwrite")  # fmt: skip
    return lineage
