"""Compress a run's newest verified checkpoint into a new run: check, build, verify, write.

Order matters for "bad input writes nothing": every refusal (unknown method, bad --to, a run
with no verified checkpoint, a model the method can't touch, a missing calibration dataset)
happens before the first byte lands in storage. The new checkpoint is built in a local
folder, loaded back through the serving loader (the exact path `rayfleet serve` takes),
evaluated against its source, and only then uploaded: weights first, manifest last, so a
reader never sees a manifest whose files are not all there.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from rayfleet import record, tracking
from rayfleet.compress.distill import prepare_distill, run_distill
from rayfleet.compress.lineage import (
    META_KEY,
    Calibration,
    Compression,
    Evaluation,
    compression_of,
)
from rayfleet.compress.methods import CompressError, Method, check_layers, method_named
from rayfleet.errors import BadInputError
from rayfleet.lazy import lazy
from rayfleet.serve.evaluate import read_split
from rayfleet.serve.loading import fetch_verified, load_verified
from rayfleet.specs.base import NAME_RE, dataset_location
from rayfleet.specs.tracking import tracking_in
from rayfleet.storage.checkpoints import (
    MANIFEST,
    checkpoint_dir_name,
    launch_token,
    required_newest,
    write_manifest,
)
from rayfleet.storage.filesystem import exists, filesystem_for
from rayfleet.storage.pins import pinned
from rayfleet.storage.uri import StorageURI
from rayfleet.train.recipes import STATE_FILE

transform = lazy("rayfleet.compress.transform")  # torch.ao: only when a model is compressed

CALIBRATION_ROWS = 512
CALIBRATION_BATCH = 32
EVAL_BATCH = 256


@dataclass(frozen=True)
class CompressResult:
    checkpoint: StorageURI
    source: StorageURI
    compression: Compression
    mlflow_attached: bool = False  # the lineage on the source run's MLflow run


# ------------------------------------------------------------------------ checks (no torch)


def check_names(run: str, to: str) -> None:
    if not NAME_RE.fullmatch(to):
        raise CompressError(
            f"--to {to!r} is not a valid run name: use lowercase letters, digits and '-', "
            "starting with a letter"
        )
    if to == run:
        raise CompressError(f"--to {to}: that is the source run; name a new run for the result")


def check_destination(fs: pafs.FileSystem, dest: StorageURI, *, overwrite: bool) -> None:
    """CompressError when runs/<to> exists (unless --overwrite) or holds a served checkpoint."""
    if not exists(fs, dest.fs_path):
        return
    if not overwrite:
        raise CompressError(
            f"--to: {dest} already exists; choose another --to name, or pass --overwrite "
            "to replace it"
        )

    if held := pinned(fs, dest.fs_path):
        holders = ", ".join(sorted(set(held.values()))) or "a deployment"
        raise CompressError(
            f"--to: {dest} holds checkpoints pinned by {holders} (being served); stop that "
            "deployment or choose another --to name"
        )


def fp32_source(run: str, to: str, storage: StorageURI, *, then: str):
    """(run_uri, dest, newest verified checkpoint, its URI) of run `run`, checked for `--to`;
    CompressError when it has none or it is quantized already (a distilled student is plain
    fp32 and may be compressed further); `then` says what to do with the fp32 source."""
    check_names(run, to)
    run_uri, dest = storage.join("runs", run), storage.join("runs", to)
    ref, _ = required_newest(run_uri, run, fix="fix --run / --storage", error=CompressError)
    source = run_uri.at(ref.path)
    done = compression_of(ref.meta, str(source))
    if done is not None and done.method != "distill":
        raise CompressError(
            f"run {run}: its checkpoint is already compressed ({done.method}, from "
            f"{done.source}); {then} the fp32 source run instead"
        )
    return run_uri, dest, ref, source


def resolve_dataset(
    storage: StorageURI, run_uri: StorageURI, given: str | None
) -> StorageURI | None:
    """`--dataset` (a name under `storage`'s datasets/, or a URI), else the run's own."""
    if given:
        return dataset_location(given, storage)

    return record.dataset_in(record.job_spec(run_uri), storage)


# ----------------------------------------------------------------------------- the work


def _read_split(dataset: StorageURI, split: str, shape: tuple[int, ...], where: str):

    try:
        shard = read_split(dataset, split)
    except (BadInputError, FileNotFoundError, OSError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CompressError(
            f"{where}: can't read the {split} split of {dataset} ({reason}); pass --dataset "
            "NAME_OR_URI"
        ) from None
    if tuple(shard.features.shape[1:]) != shape:
        raise CompressError(
            f"{where}: dataset {dataset} has features {list(shard.features.shape[1:])}, the "
            f"model takes {list(shape)}; pass the --dataset it was trained on"
        )
    if not len(shard):
        raise CompressError(f"{where}: the {split} split of {dataset} is empty")
    return shard


def _calibration_batches(features: np.ndarray, rows: int):
    """A seeded random subset of the train split, in batches (ranges from all of it, not only
    the first rows an importer happened to write)."""
    import torch

    pick = np.random.default_rng(0).permutation(len(features))[:rows]
    subset = torch.from_numpy(np.ascontiguousarray(features[np.sort(pick)]))
    return list(subset.split(CALIBRATION_BATCH)), len(pick)


def accuracy(model, features: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a LoadedModel over a split, in batches."""
    features = np.array(features)  # a writable copy: split arrays come read-only from Arrow
    correct = 0
    for i in range(0, len(labels), EVAL_BATCH):
        logits = model.predict(features[i : i + EVAL_BATCH])
        correct += int((logits.argmax(1) == labels[i : i + EVAL_BATCH]).sum())
    return correct / len(labels)


def _serialized_size(state: dict[str, Any]) -> int:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def _upload(local: Path, fs: pafs.FileSystem, dest: str) -> None:
    """Every file, then the manifest last."""
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST)
    fs.create_dir(dest, recursive=True)
    for path in [*files, local / MANIFEST]:
        target = f"{dest}/{path.relative_to(local).as_posix()}"
        pafs.copy_files(
            str(path),
            target,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )


def compress_run(
    run: str,
    *,
    storage: StorageURI,
    method: str,
    to: str,
    overwrite: bool = False,
    dataset: str | None = None,
    calibration_rows: int = CALIBRATION_ROWS,
) -> CompressResult:
    """Write `runs/<to>/checkpoint_e.../` holding run `run`'s newest verified checkpoint
    compressed with `method`. Raises CompressError / ModelLoadError (exit 2) on bad input.

    `distill` trains a student TrainJob with its defaults (compress.distill, which the CLI
    calls directly for its own flags)."""
    chosen = method_named(method)
    if chosen.name == "distill":
        plan = prepare_distill(run, storage=storage, to=to, overwrite=overwrite, dataset=dataset)
        result = run_distill(plan)
        return replace(
            result, mlflow_attached=attach_to_source(storage.join("runs", run), to, result)
        )
    run_uri, dest, ref, source = fp32_source(run, to, storage, then="compress")
    check_destination(filesystem_for(dest), dest, overwrite=overwrite)
    data = resolve_dataset(storage, run_uri, dataset)
    if chosen.needs_calibration and data is None:
        raise CompressError(
            f"run {run}: --method {chosen.name} calibrates on the train split, and the run's "
            "record names no dataset; pass --dataset NAME_OR_URI"
        )
    with tempfile.TemporaryDirectory(prefix="rayfleet-compress-") as tmp:
        result = _compress(
            run, ref.epoch, source, dest, chosen, data, calibration_rows, Path(tmp), overwrite
        )
    return replace(result, mlflow_attached=attach_to_source(run_uri, to, result))


def attach_to_source(run_uri: StorageURI, to: str, result: CompressResult) -> bool:
    """The lineage (as `compression-<to>.json`) and its size ratio and accuracy change on the
    source run's MLflow run, when that run was tracked; never fails the compression."""

    spec = tracking_in(record.job_spec(run_uri))
    if tracking.target_for(spec) is None:
        return False
    lineage = result.compression
    prefix = f"compress_{lineage.method}_"
    metrics = {f"{prefix}size_ratio": lineage.size_ratio}
    if lineage.evaluation is not None:
        metrics[f"{prefix}accuracy_delta"] = lineage.evaluation.delta
    doc = {"checkpoint": str(result.checkpoint), **lineage.to_meta()}
    return tracking.attach(str(run_uri), doc, f"compression-{to}.json", spec=spec, metrics=metrics)


def _compress(
    run: str,
    epoch: int,
    source: StorageURI,
    dest: StorageURI,
    method: Method,
    data: StorageURI | None,
    calibration_rows: int,
    tmp: Path,
    overwrite: bool,
) -> CompressResult:
    import torch

    where = f"run {run}"
    src_dir, out_dir = tmp / "source", tmp / "out"
    manifest = fetch_verified(source, src_dir)
    manifest_sha = hashlib.sha256((src_dir / MANIFEST).read_bytes()).hexdigest()
    fp32 = load_verified(src_dir, manifest, str(source), name=run)
    layers = check_layers(
        method, transform.layer_types(fp32.module), f"{where} ({manifest['meta']['recipe']})"
    )
    signature = fp32.signature
    calibration, val = None, None
    batches: list = []
    if data is not None and method.needs_calibration:
        train = _read_split(data, "train", signature.shape, where)
        batches, rows = _calibration_batches(train.features, calibration_rows)
        calibration = Calibration(dataset=str(data), split="train", rows=rows)
    if data is not None:
        val = _read_split(data, "val", signature.shape, where)
    engine = transform.default_engine() if method.name != "fp16" else None
    example = torch.zeros((1, *signature.shape), dtype=getattr(torch, signature.dtype))
    # A fresh fp32 copy to transform: dynamic quantization swaps modules in place.
    module = load_verified(src_dir, manifest, str(source), name=run).module
    compressed = transform.compress_module(
        module, method, engine=engine or "", example=example, calibration=batches
    )
    out_dir.mkdir()
    with transform.quiet():
        torch.save({"model": transform.weights_of(compressed, method)}, out_dir / STATE_FILE)
    lineage = Compression(
        method=method.name,
        engine=engine,
        source=str(source),
        source_manifest_sha256=manifest_sha,
        source_weights_bytes=_serialized_size(fp32.module.state_dict()),
        weights_bytes=(out_dir / STATE_FILE).stat().st_size,
        layers=layers,
        calibration=calibration,
        torch_version=torch.__version__,
    )
    meta = {k: v for k, v in manifest["meta"].items() if k != "metrics"}
    written = write_manifest(out_dir, {**meta, META_KEY: lineage.to_meta()})
    # Load it back the way a replica will; what is evaluated is what will be served.
    served = load_verified(out_dir, written, f"{dest} (new)", name=f"{run}-{method.name}")
    if val is not None:
        labels = val.labels
        evaluation = Evaluation(
            dataset=str(data),
            split="val",
            rows=len(labels),
            source_accuracy=accuracy(fp32, val.features, labels),
            accuracy=accuracy(served, val.features, labels),
        )
        lineage = lineage.model_copy(update={"evaluation": evaluation})
        meta["metrics"] = {"val_accuracy": evaluation.accuracy}
        write_manifest(out_dir, {**meta, META_KEY: lineage.to_meta()})
    fs = filesystem_for(dest)
    if overwrite and exists(fs, dest.fs_path):
        check_destination(fs, dest, overwrite=True)  # again: a deployment may have pinned it
        fs.delete_dir(dest.fs_path)
    target = dest.join(checkpoint_dir_name(max(epoch, 0), launch_token()))
    _upload(out_dir, fs, target.fs_path)
    return CompressResult(checkpoint=target, source=source, compression=lineage)
