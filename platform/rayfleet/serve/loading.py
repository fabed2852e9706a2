"""From a ModelDeployment's source to a loaded model, refusing anything that does not verify.

Two steps, run in two places:

1. `resolve_source` (the deploying process, before Ray or Serve start): turn `checkpoint`,
   `run` or `sweep` into one checkpoint URI whose manifest verifies (sizes and sha256) and
   whose manifest says how to rebuild the model. Every replica then loads that pinned
   checkpoint, so a checkpoint written mid-rollout can't give replicas different models.
2. `load_model` (each replica): copy the checkpoint locally, verify the copy, rebuild the
   recipe's model from the manifest and load the weights with `torch.load(weights_only=True)`
   so a checkpoint can carry tensors, never code. A checkpoint `rayfleet compress` wrote
   (int8 or fp16, meta "compression") gets the same transformation before its weights load.

The loader opens only files the verified manifest lists. Verification checks the files the
manifest names, so a file it does not name (a `state.pt` dropped into the folder after the
manifest was written) would otherwise be loaded without anyone having hashed it.

Whoever deploys a resolved checkpoint pins it (`pin_checkpoint`), so pruning the run it came
from never deletes a checkpoint a replica may still have to load.

A source that fails either step raises ModelLoadError: bad input (exit code 2), one line that
names the checkpoint, what is wrong with it and what to do.
"""

from __future__ import annotations

import importlib
import json
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayfleet.compress.lineage import compression_of
from rayfleet.errors import BadInputError, CheckpointError, StorageError
from rayfleet.storage.checkpoints import MANIFEST, download_verified, required_newest, verify
from rayfleet.storage.filesystem import filesystem_for, read_bytes
from rayfleet.storage.pins import pin
from rayfleet.storage.uri import StorageURI, parse_uri
from rayfleet.train.recipes import RECIPES, STATE_FILE
from rayfleet.tune.documents import BestTrial

if TYPE_CHECKING:
    import numpy as np

    from rayfleet.specs.serve import ModelDeployment

# Recipe name (manifest meta "recipe") -> the function that builds its model from model_config.
MODEL_BUILDERS = {name: r.model_builder for name, r in RECIPES.items() if r.model_builder}

# numpy dtype name -> Open Inference Protocol datatype, for the dtypes a signature may use.
OIP_DATATYPES = {
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
}


class ModelLoadError(BadInputError):
    """A model source can't be served: missing, unverified, corrupt, or not a known model."""


@dataclass(frozen=True)
class Signature:
    """What one example looks like (without the batch dimension), from the manifest."""

    shape: tuple[int, ...]
    dtype: str  # numpy name, e.g. "float32"
    num_classes: int
    input_name: str = "input"

    @property
    def datatype(self) -> str:
        return OIP_DATATYPES[self.dtype]


@dataclass(frozen=True)
class ResolvedSource:
    """One verified checkpoint, how it was chosen, and what its manifest says."""

    uri: StorageURI
    via: str  # "run digits", "sweep digits-sweep (val_accuracy=0.98)", "checkpoint"
    meta: dict[str, Any]
    skipped: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.uri.key.rstrip("/").rsplit("/", 1)[-1]

    def summary(self) -> str:
        epoch = self.meta.get("epoch")
        parts = [f"epoch {epoch + 1}"] if isinstance(epoch, int) else []
        for key, value in sorted((self.meta.get("metrics") or {}).items()):
            if key.startswith("val_") and isinstance(value, (int, float)):
                parts.append(f"{key} {value:.4g}")
        return f"{self.name} ({', '.join(parts)})" if parts else self.name


def signature_from_meta(meta: dict[str, Any], where: str) -> Signature:
    """The input signature a checkpoint's manifest records; ModelLoadError if it can't serve."""
    recipe = meta.get("recipe")
    if recipe not in MODEL_BUILDERS:
        known = ", ".join(sorted(MODEL_BUILDERS))
        what = f"recipe {recipe!r}" if recipe else "no recipe (a user entrypoint?)"
        raise ModelLoadError(
            f"checkpoint {where}: its manifest names {what}; serving rebuilds models of the "
            f"built-in recipes only ({known})"
        )
    config = meta.get("model_config") or {}
    spec = meta.get("input")
    if spec is None and recipe == "synthetic-mlp":  # recorded by config, not in meta
        spec = {"shape": [int(config.get("inputs", 784))], "dtype": "float32"}
    try:
        shape = tuple(int(d) for d in spec["shape"])
        dtype = str(spec["dtype"])
        classes = int(meta.get("num_classes") or config.get("classes") or 0)
    except (TypeError, KeyError, ValueError):
        raise ModelLoadError(
            f"checkpoint {where}: its manifest has no input signature (meta.input shape and "
            "dtype); retrain it with this version of rayfleet"
        ) from None
    if dtype not in OIP_DATATYPES or not shape or min(shape) < 1 or classes < 1:
        raise ModelLoadError(
            f"checkpoint {where}: input signature {spec} / {classes} classes is not servable"
        )
    return Signature(shape=shape, dtype=dtype, num_classes=classes)


def require_listed(manifest: dict[str, Any], name: str, where: str) -> None:
    """ModelLoadError unless the (verified) manifest lists file `name`."""
    listed = {e.get("path") for e in manifest.get("files") or [] if isinstance(e, dict)}
    if name not in listed:
        raise ModelLoadError(
            f"checkpoint {where}: {name} is not listed in its manifest, so nothing verified "
            "it; refusing to load it. Serve a checkpoint written by `rayfleet run`"
        )


def _require_model_listed(uri: StorageURI) -> None:
    try:
        manifest = json.loads(read_bytes(filesystem_for(uri), f"{uri.fs_path}/{MANIFEST}"))
    except (FileNotFoundError, ValueError):
        raise ModelLoadError(f"checkpoint {uri}: its manifest can't be read") from None
    require_listed(manifest, STATE_FILE, str(uri))


# ------------------------------------------------------------------------------- resolving


def _verified(uri: StorageURI, what: str) -> dict[str, Any]:
    result = verify(filesystem_for(uri), uri.fs_path)
    if not result.ok:
        raise ModelLoadError(
            f"{what} {uri}: {result.reason}; this checkpoint is refused. Point spec.source at "
            "a verified checkpoint (`run: NAME` picks the newest one that verifies)"
        )
    return result.manifest.get("meta", {})


def read_best(storage: StorageURI, sweep: str) -> BestTrial:
    """`<storage>/sweeps/NAME/best.json`: the sweep's best trial and its checkpoint URI."""
    from rayfleet.tune.results import required_best

    return required_best(
        storage.join("sweeps", sweep),
        sweep,
        fix="fix spec.source.sweep / spec.storage",
        error=ModelLoadError,
    )


def resolve_source(deployment: ModelDeployment) -> ResolvedSource:
    """The verified checkpoint a deployment serves. Raises ModelLoadError (exit code 2)."""
    source = deployment.spec.source
    storage = deployment.storage_uri()
    skipped: list[str] = []
    if source.checkpoint is not None:
        uri = parse_uri(source.checkpoint)  # literal: specs never expand env variables
        meta = _verified(uri, "checkpoint")
        via = "checkpoint"
    elif source.run is not None:
        run_uri = storage.join("runs", source.run)
        ref, skipped_refs = required_newest(
            run_uri, source.run, fix="fix spec.source.run / spec.storage", error=ModelLoadError
        )
        skipped = [str(s) for s in skipped_refs]
        uri, meta, via = run_uri.at(ref.path), ref.meta, f"run {source.run}"
    else:
        best = read_best(storage, source.sweep)
        try:
            uri = parse_uri(best.checkpoint)
        except BadInputError as exc:
            raise ModelLoadError(f"sweep {source.sweep}: best.json checkpoint: {exc}") from None
        meta = _verified(uri, f"sweep {source.sweep}: best checkpoint")
        via = f"sweep {source.sweep} ({best.metric}={best.value:.4g})"
    signature_from_meta(meta, str(uri))  # refuse unservable models before anything starts
    _require_model_listed(uri)
    return ResolvedSource(uri=uri, via=via, meta=meta, skipped=skipped)


def pin_checkpoint(deployment: ModelDeployment, checkpoint: StorageURI | str) -> str | None:
    """Pin the checkpoint a deployment serves (holder `deployment-NAME`), so pruning its run
    never deletes it. Returns None, or a one-line warning when the pin can't be written (a
    read-only store, say): serving goes on, but the user should know pruning may remove it."""

    uri = parse_uri(checkpoint) if isinstance(checkpoint, str) else checkpoint
    try:
        pin(filesystem_for(uri), uri.fs_path, f"deployment-{deployment.name}")
    except (OSError, StorageError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return (
            f"could not pin {uri} for deployment {deployment.name} ({reason}); pruning its "
            "run may delete it while it is served"
        )
    return None


# --------------------------------------------------------------------------------- loading


def _builder(recipe: str):
    module, _, attr = MODEL_BUILDERS[recipe].partition(":")
    return getattr(importlib.import_module(module), attr)


class LoadedModel:
    """A recipe's torch module with verified weights, in eval mode, and its signature."""

    def __init__(self, name: str, uri: str, meta: dict[str, Any], module, device: str = "cpu"):
        self.name = name
        self.uri = uri
        self.meta = meta
        self.signature = signature_from_meta(meta, uri)
        self.version = uri.rstrip("/").rsplit("/", 1)[-1]
        self.module = module
        self.device = device

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits (float32, shape [N, classes]) for a batch shaped [N, *signature.shape]."""
        import numpy as np
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(x).to(self.device))
        return np.ascontiguousarray(out.float().cpu().numpy())


def _load_reason(exc: BaseException) -> str:
    """The line of torch's error that says why (not its advice to turn weights_only off)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "GLOBAL" in line or "nsupported" in line:
            return f"it holds code or objects, not only tensors ({line[:200]})"
    if isinstance(exc, pickle.UnpicklingError) and lines:
        return lines[-1][:200]
    return lines[0][:200] if lines else type(exc).__name__


def _load_compressed(module, weights: dict, compression, signature: Signature, uri: str):
    """The recipe's `module` restructured as `rayfleet compress` left it, with `weights`."""
    import torch

    from rayfleet.compress import transform

    example = torch.zeros((1, *signature.shape), dtype=getattr(torch, signature.dtype))
    try:
        module = transform.restructure(module, compression, example)
    except BadInputError as exc:
        raise ModelLoadError(f"checkpoint {uri}: {exc}") from None
    transform.load_weights(module, weights)
    return module


def fetch_verified(uri: StorageURI, local_dir: str | Path) -> dict[str, Any]:
    """Copy a checkpoint to `local_dir` and verify the copy; its manifest, or ModelLoadError."""
    try:
        return download_verified(filesystem_for(uri), uri.fs_path, local_dir)
    except CheckpointError as exc:
        raise ModelLoadError(f"{exc}; refusing to serve it") from None
    except FileNotFoundError:
        raise ModelLoadError(f"checkpoint {uri}: not found") from None


def load_model(
    uri: StorageURI | str, *, name: str, device: str = "cpu", work_dir: str | None = None
) -> LoadedModel:
    """Copy, verify and load a checkpoint. Raises ModelLoadError for anything unservable."""
    uri = parse_uri(uri) if isinstance(uri, str) else uri
    with tempfile.TemporaryDirectory(prefix="rayfleet-model-", dir=work_dir) as tmp:
        manifest = fetch_verified(uri, tmp)
        return load_verified(Path(tmp), manifest, str(uri), name=name, device=device)


def load_verified(
    folder: Path, manifest: dict[str, Any], uri: str, *, name: str, device: str = "cpu"
) -> LoadedModel:
    """The model in a local checkpoint copy whose `manifest` was just verified (`uri` names
    it in messages). A compressed checkpoint (meta "compression") is rebuilt from its recipe,
    given the same transformation, and only then gets its stored weights."""
    import torch

    meta = manifest.get("meta", {})
    signature = signature_from_meta(meta, uri)
    try:
        compression = compression_of(meta, uri)
    except BadInputError as exc:
        raise ModelLoadError(str(exc)) from None
    require_listed(manifest, STATE_FILE, uri)
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise ModelLoadError(f"checkpoint {uri}: has no {STATE_FILE}; it is not servable")
    try:
        # weights_only: tensors and plain containers only; a pickled object that would run
        # code on load is rejected here.
        with warnings.catch_warnings():  # int8 weights trip torch's own deprecation notices
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            warnings.filterwarnings("ignore", message="torch.quantize_per_tensor")
            state = torch.load(state_path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
    ) as e:
        raise ModelLoadError(
            f"checkpoint {uri}: {STATE_FILE} is refused by torch.load(weights_only=True): "
            f"{_load_reason(e)}; it is not served"
        ) from None
    weights = state.get("model") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise ModelLoadError(f"checkpoint {uri}: {STATE_FILE} holds no 'model' state dict")
    module = _builder(meta["recipe"])(meta.get("model_config") or {})
    try:
        if compression is None:
            module.load_state_dict(weights)
        else:
            module = _load_compressed(module, weights, compression, signature, uri)
    # KeyError: torch's int8 layers pop the keys they expect without checking for them.
    except (RuntimeError, KeyError) as exc:
        how = f" compressed with {compression.method}" if compression else ""
        raise ModelLoadError(
            f"checkpoint {uri}: weights do not fit recipe {meta['recipe']}{how} with config "
            f"{meta.get('model_config')}: {str(exc).splitlines()[0][:200]}"
        ) from None
    module.to(device).eval()
    return LoadedModel(name, uri, meta, module, device)
