"""What an evaluation means: one verified checkpoint, and a dataset split that fits it.

Everything here is decided before a model is loaded or a byte is written, so bad input fails
in one line with exit code 2 and leaves storage as it was:

- the checkpoint: `--checkpoint URI` itself, `--run NAME`'s newest checkpoint that verifies,
  or `--sweep NAME`'s best (its best.json); never one whose manifest does not verify, and
  only a model that serving could rebuild (serve.loading decides that, for both);
- the dataset: `--dataset`, else the one the run trained on, from the run record beside the
  checkpoint (`<run>/record.json`, also kept for every sweep trial);
- the fit: the dataset's feature shape, dtype and class count against the checkpoint's input
  signature, and a split the dataset has.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from rayfleet import record
from rayfleet.data.layout import SPLITS, DatasetInfo, read_info
from rayfleet.errors import BadInputError
from rayfleet.serve.loading import Signature, require_listed, signature_from_meta
from rayfleet.specs.base import dataset_location, resolve_storage
from rayfleet.specs.tracking import TrackingSpec, tracking_in
from rayfleet.storage.checkpoints import MANIFEST, required_newest, verify
from rayfleet.storage.filesystem import filesystem_for, read_bytes
from rayfleet.storage.uri import StorageURI, parse_uri
from rayfleet.train.recipes import STATE_FILE
from rayfleet.tune.results import required_best


class EvaluationError(BadInputError):
    """An evaluation can't start as asked: no verified checkpoint, a dataset that does not fit
    the model, an unknown split. Nothing was loaded or written."""


@dataclass(frozen=True)
class Checkpoint:
    """One verified checkpoint: where, how it was chosen, its manifest's meta and sha256."""

    uri: StorageURI
    via: str
    meta: dict[str, Any]
    manifest_sha256: str
    signature: Signature
    skipped: list[str] = field(default_factory=list)
    sweep_uri: StorageURI | None = None  # the sweep it is the best of, if any

    @property
    def run_uri(self) -> StorageURI:
        """The run folder holding it (a sweep trial's `<sweep>/<trial>/train`)."""
        return self.uri.at(self.uri.fs_path.rstrip("/").rsplit("/", 1)[0])


def read_manifest(uri: StorageURI) -> tuple[dict[str, Any], str]:
    """A checkpoint's manifest and the sha256 of its bytes as stored (one read of both)."""
    try:
        raw = read_bytes(filesystem_for(uri), f"{uri.fs_path}/{MANIFEST}")
        manifest = json.loads(raw)
    except (FileNotFoundError, ValueError):
        raise EvaluationError(
            f"checkpoint {uri}: its manifest is gone or changed while it was read; "
            "evaluate it again"
        ) from None
    return manifest, hashlib.sha256(raw).hexdigest()


def _verified(uri: StorageURI, what: str, hint: str) -> None:
    result = verify(filesystem_for(uri), uri.fs_path)
    if not result.ok:
        raise EvaluationError(f"{what} {uri}: {result.reason}; it is not evaluated. {hint}")


def resolve(
    *, run: str | None, sweep: str | None, checkpoint: str | None, storage: str | None
) -> Checkpoint:
    """The one verified checkpoint `--run`, `--sweep` or `--checkpoint` names."""
    given = [f for f, v in (("--run", run), ("--sweep", sweep), ("--checkpoint", checkpoint)) if v]
    if len(given) != 1:
        got = f" (got {' and '.join(given)})" if given else ""
        raise EvaluationError(
            f"give exactly one of --run NAME, --sweep NAME or --checkpoint URI{got}"
        )
    root = resolve_storage(storage)
    skipped: list[str] = []
    sweep_uri = None
    if checkpoint is not None:
        uri, via = parse_uri(checkpoint), "checkpoint"
        _verified(uri, "checkpoint", "Pass a verified one (--run NAME picks the newest that does)")
    elif run is not None:
        run_uri = root.join("runs", run)
        ref, skipped_refs = required_newest(
            run_uri, run, fix="check --run and --storage", error=EvaluationError
        )
        skipped = [str(s) for s in skipped_refs]
        uri, via = run_uri.at(ref.path), f"run {run}"  # newest_verified verified it
    else:
        sweep_uri = root.join("sweeps", sweep)
        uri, via = _best_of(sweep_uri, sweep)
        _verified(uri, f"sweep {sweep}: best checkpoint", "Resume the sweep to pick again")
    # Read after verifying: if it changed in between, the loader's own verification of the
    # copy it loads, and the digest compared again after loading, catch it.
    manifest, digest = read_manifest(uri)
    meta = manifest.get("meta", {}) if isinstance(manifest, dict) else {}
    signature = signature_from_meta(meta, str(uri))  # ModelLoadError: exit 2 as well
    require_listed(manifest, STATE_FILE, str(uri))
    return Checkpoint(uri, via, meta, digest, signature, skipped, sweep_uri)


def _best_of(sweep_uri: StorageURI, sweep: str) -> tuple[StorageURI, str]:

    best = required_best(sweep_uri, sweep, fix="check --sweep and --storage", error=EvaluationError)
    try:
        uri = parse_uri(best.checkpoint)
    except BadInputError as exc:
        raise EvaluationError(f"sweep {sweep}: best.json checkpoint: {exc}") from None
    return uri, f"sweep {sweep} (best trial {best.trial_id}, {best.metric}={best.value:.4g})"


# ------------------------------------------------------------------------ the dataset


@dataclass(frozen=True)
class RunFacts:
    """What the run record beside a checkpoint says: its dataset and MLflow tracking."""

    dataset: StorageURI | None
    tracking: TrackingSpec | None


def run_facts(checkpoint: Checkpoint, storage: str | None) -> RunFacts:
    """The dataset the checkpoint's run trained on and its tracking section (each None when
    no record says; a sweep trial's tracking may come from its sweep). A dataset name
    resolves under the run's storage, else --storage."""
    spec = record.job_spec(checkpoint.run_uri)
    dataset = record.dataset_in(spec, spec.get("storage") or storage)
    if dataset is None:
        dataset = _compressed_from(checkpoint.meta, storage)
    tracking = tracking_in(spec)
    if tracking is None and checkpoint.sweep_uri is not None:
        tracking = tracking_in(record.job_spec(checkpoint.sweep_uri))
    return RunFacts(dataset, tracking)


def _compressed_from(meta: dict[str, Any], storage: str | None) -> StorageURI | None:
    """A `rayfleet compress` checkpoint has no record of its own: the dataset its lineage
    measured it on (meta.compression.evaluation, else .calibration) is its source's."""
    lineage = meta.get("compression") if isinstance(meta.get("compression"), dict) else {}
    for part in ("evaluation", "calibration"):
        raw = (lineage.get(part) or {}).get("dataset")
        if isinstance(raw, str) and raw:
            return dataset_location(raw, storage)
    return None


def dataset_uri(given: str | None, facts: RunFacts, checkpoint: Checkpoint, storage: str | None):
    """`--dataset` (a name under <storage>/datasets/, or a URI), else the run's own."""
    if given:
        return dataset_location(given, storage)
    if facts.dataset is None:
        raise EvaluationError(
            f"checkpoint {checkpoint.uri}: no run record beside it names the dataset it "
            "trained on; pass --dataset NAME_OR_URI"
        )
    return facts.dataset


def check_fit(dataset: StorageURI, split: str, checkpoint: Checkpoint) -> DatasetInfo:
    """The dataset's descriptor, once its split exists and its examples fit the model."""
    if split not in SPLITS:
        raise EvaluationError(f"--split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    info = read_info(filesystem_for(dataset), dataset)
    sig = checkpoint.signature
    shape, classes = tuple(info.feature_shape), info.num_classes
    fix = "pass the --dataset the model was trained on, or a checkpoint trained on this one"
    if shape != sig.shape or info.feature_dtype != sig.dtype:
        raise EvaluationError(
            f"dataset {dataset}: examples are {info.feature_dtype} {list(shape)} but checkpoint "
            f"{checkpoint.uri} takes {sig.dtype} {list(sig.shape)}; {fix}"
        )
    if classes != sig.num_classes:
        raise EvaluationError(
            f"dataset {dataset}: {classes} classes but checkpoint {checkpoint.uri} predicts "
            f"{sig.num_classes}; {fix}"
        )
    return info
