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

What a served model takes and gives comes from the manifest too (`signature_from_meta`): a
classifier's one input and its class scores, or named inputs, some optional, and plain
tensor outputs (digits-gan's generator: latents and labels in, images out).

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
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayfleet.compress.lineage import compression_of
from rayfleet.errors import BadInputError, CheckpointError, StorageError
from rayfleet.lazy import lazy
from rayfleet.storage.checkpoints import MANIFEST, download_verified, required_newest, verify
from rayfleet.storage.filesystem import filesystem_for, read_bytes
from rayfleet.storage.pins import pin
from rayfleet.storage.uri import StorageURI, parse_uri
from rayfleet.train.recipes import RECIPES, STATE_FILE
from rayfleet.tune.documents import BestTrial
from rayfleet.tune.results import required_best

transform = lazy("rayfleet.compress.transform")  # torch.ao: only for a compressed checkpoint

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
NUMPY_DTYPES = {datatype: name for name, datatype in OIP_DATATYPES.items()}
# How an absent optional input is filled in, per row of a request (the manifest's "default").
DEFAULTS = {
    "cycle": "row i of a request gets lo + i % (hi - lo + 1) from its range [lo, hi]",
}


class ModelLoadError(BadInputError):
    """A model source can't be served: missing, unverified, corrupt, or not a known model."""


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature: one example's shape (no batch dimension; () is one
    value per row) and the numpy dtype the model takes or gives.

    Inputs may accept `also` other dtypes (converted to `dtype`), be `optional` (filled in
    by `default`, see DEFAULTS) and have a closed `bounds` [lo, hi] (integer inputs: whole
    numbers in it; a request outside gets a 400). For outputs, `bounds` is the value range
    the served tensor is in and `module_range`, when given, the range the model's module
    emits, mapped linearly onto `bounds` before it is sent (a generator's tanh [-1, 1] to the
    data's [0, 1] pixels)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    also: tuple[str, ...] = ()
    optional: bool = False
    default: str | None = None
    bounds: tuple[float, float] | None = None
    module_range: tuple[float, float] | None = None

    @property
    def datatype(self) -> str:
        return OIP_DATATYPES[self.dtype]

    @cached_property
    def datatypes(self) -> tuple[str, ...]:
        """The OIP datatypes a request may send it in (its own first)."""
        return (self.datatype, *(OIP_DATATYPES[d] for d in self.also))

    @property
    def integer(self) -> bool:
        return self.dtype.startswith(("int", "uint"))

    def metadata(self) -> dict[str, Any]:
        """The tensor as model metadata lists it: name, datatype, shape with -1 for N."""
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}

    def default_rows(self, rows: int) -> np.ndarray:
        """What an absent optional input is, for a request of `rows` rows (see DEFAULTS)."""
        import numpy as np

        if self.default == "cycle" and self.bounds is not None:
            lo, hi = int(self.bounds[0]), int(self.bounds[1])
            values = lo + np.arange(rows) % (hi - lo + 1)
            return np.broadcast_to(
                values.reshape(rows, *([1] * len(self.shape))), (rows, *self.shape)
            ).astype(self.dtype)
        raise ValueError(f"input {self.name!r} has no default")

    def describe(self) -> dict[str, Any]:
        """What metadata's `parameters.signature` says of it beyond name, datatype and shape
        (empty for a plain tensor)."""
        about: dict[str, Any] = {}
        if self.also:
            about["datatypes"] = list(self.datatypes)
        if self.optional:
            about["optional"] = True
        if self.bounds is not None:
            about["range"] = [int(v) if self.integer else v for v in self.bounds]
        if self.default == "cycle" and self.bounds is not None:
            lo, hi = int(self.bounds[0]), int(self.bounds[1])
            first = f"{lo} + " if lo else ""
            about["default"] = f"when absent, row i of a request gets {first}i % {hi - lo + 1}"
        return about


CLASS_OUTPUTS = ("logits", "probabilities", "predicted_class")


@dataclass(frozen=True)
class Signature:
    """What a served model takes and gives, one example at a time (no batch dimension).

    The first input (`input_name`, `shape`, `dtype`) is the main one: always required, and
    what evaluation and compression read a dataset's features as. `extra_inputs` follow it
    (a generator's optional class label). `tensor_outputs` empty: a classifier, whose module
    returns logits [N, num_classes] and which answers `logits`, `probabilities` and
    `predicted_class` (CLASS_OUTPUTS); else the module returns those tensors, in order."""

    shape: tuple[int, ...]
    dtype: str  # numpy name, e.g. "float32"
    num_classes: int
    input_name: str = "input"
    extra_inputs: tuple[TensorSpec, ...] = ()
    tensor_outputs: tuple[TensorSpec, ...] = ()

    @property
    def datatype(self) -> str:
        return OIP_DATATYPES[self.dtype]

    @property
    def classifier(self) -> bool:
        return not self.tensor_outputs

    @cached_property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec(self.input_name, self.shape, self.dtype), *self.extra_inputs)

    @cached_property
    def input_specs(self) -> dict[str, TensorSpec]:
        """The inputs by name, in order."""
        return {spec.name: spec for spec in self.inputs}

    @cached_property
    def outputs(self) -> tuple[TensorSpec, ...]:
        if not self.classifier:
            return self.tensor_outputs
        classes = (self.num_classes,)
        return (
            TensorSpec("logits", classes, "float32"),
            TensorSpec("probabilities", classes, "float32"),
            TensorSpec("predicted_class", (), "int64"),
        )

    @cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def describe(self) -> dict[str, Any]:
        """Model metadata's `parameters.signature`: what name, datatype and shape do not say
        (optional inputs and their defaults, other datatypes, value ranges); {} for a
        classifier, whose metadata is all in its tensors."""
        tensors = {t.name: t.describe() for t in (*self.inputs, *self.tensor_outputs)}
        return {name: about for name, about in tensors.items() if about}


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
    """The signature a checkpoint's manifest records; ModelLoadError if it can't serve.

    A classifier's manifest has `input` (one example's shape and dtype) and `num_classes`; a
    model with other inputs or plain tensor outputs (digits-gan's generator) records its
    whole signature in `signature` (see `_declared_signature`)."""
    recipe = meta.get("recipe")
    if recipe not in MODEL_BUILDERS:
        known = ", ".join(sorted(MODEL_BUILDERS))
        what = f"recipe {recipe!r}" if recipe else "no recipe (a user entrypoint?)"
        raise ModelLoadError(
            f"checkpoint {where}: its manifest names {what}; serving rebuilds models of the "
            f"built-in recipes only ({known})"
        )
    if meta.get("signature") is not None:
        return _declared_signature(meta, where)
    if meta.get("output") is not None:  # a generator's checkpoint from before signatures
        raise ModelLoadError(
            f"checkpoint {where}: its manifest describes an output tensor but records no "
            "serving signature (meta.signature; written since rayfleet serves generators); "
            "retrain it with this version of rayfleet"
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


_TENSOR_KEYS = {"name", "shape", "dtype", "also", "optional", "default", "range", "module_range"}


def _declared_signature(meta: dict[str, Any], where: str) -> Signature:
    """meta.signature: {"inputs": [TENSOR, ...], "outputs": [TENSOR, ...]}, each TENSOR
    {"name", "shape" (one example's; [] for one value per row), "dtype" (numpy name)} plus,
    for inputs, "also" (other dtypes accepted), "optional" with a "default" (DEFAULTS) and
    "range" [lo, hi]; for outputs "range" and "module_range" (see TensorSpec). The first
    input is required and takes one dtype."""
    doc = meta["signature"]

    def bad(message: str) -> ModelLoadError:
        return ModelLoadError(f"checkpoint {where}: meta.signature {message}; it is not servable")

    if not isinstance(doc, dict) or set(doc) != {"inputs", "outputs"}:
        raise bad("must be an object with exactly inputs and outputs")
    specs: dict[str, list[TensorSpec]] = {}
    for role in ("inputs", "outputs"):
        tensors = doc[role]
        if not isinstance(tensors, list) or not tensors:
            raise bad(f"{role} must be a non-empty list of tensors")
        specs[role] = [_tensor_spec(t, role, bad) for t in tensors]
        names = [t.name for t in specs[role]]
        if len(set(names)) != len(names):
            raise bad(f"{role} repeat a name: {names}")
    first, *extra = specs["inputs"]
    if first.optional or first.also:
        raise bad(f"input {first.name!r} (the first) must be required and take one dtype")
    try:
        classes = int(meta.get("num_classes") or 0)
    except (TypeError, ValueError):
        raise bad("comes with a num_classes that is not a number") from None
    return Signature(
        shape=first.shape,
        dtype=first.dtype,
        num_classes=classes,
        input_name=first.name,
        extra_inputs=tuple(extra),
        tensor_outputs=tuple(specs["outputs"]),
    )


def _pair(value: Any) -> tuple[float, float] | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and value[0] <= value[1]
    ):
        return float(value[0]), float(value[1])
    return None


def _tensor_spec(doc: Any, role: str, bad) -> TensorSpec:
    """One tensor of meta.signature, checked (`bad(message)` makes the error)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise bad(f"{role}: each tensor must be an object with a name")
    name = doc["name"]
    what = f"{role[:-1]} {name!r}"
    unknown = set(doc) - _TENSOR_KEYS
    allowed = {"inputs": {"also", "optional", "default"}, "outputs": {"module_range"}}
    misplaced = {"also", "optional", "default", "module_range"} - allowed[role]
    if unknown or misplaced & set(doc):
        raise bad(f"{what}: unknown key(s) {sorted(unknown | (misplaced & set(doc)))}")
    shape, dtype, also = doc.get("shape"), doc.get("dtype"), doc.get("also", [])
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
    ):
        raise bad(f"{what}: shape {shape!r} must be a list of positive integers")
    if not isinstance(also, list) or not all(
        isinstance(a, str) and a in OIP_DATATYPES for a in [dtype, *also]
    ):
        raise bad(f"{what}: dtype {dtype!r} / also {also!r} must be among {sorted(OIP_DATATYPES)}")
    bounds = None
    if doc.get("range") is not None and (bounds := _pair(doc["range"])) is None:
        raise bad(f"{what}: range {doc['range']!r} must be [low, high]")
    module_range = None
    if doc.get("module_range") is not None:
        if (module_range := _pair(doc["module_range"])) is None or bounds is None:
            raise bad(f"{what}: module_range must be [low, high], next to a range")
        if module_range[0] == module_range[1]:
            raise bad(f"{what}: module_range must not be a single value")
    optional, default = doc.get("optional", False), doc.get("default")
    if not isinstance(optional, bool) or optional != (default is not None):
        raise bad(f"{what}: an optional input needs a default, and only it has one")
    if default is not None and (
        default not in DEFAULTS or not dtype.startswith(("int", "uint")) or bounds is None
    ):
        raise bad(
            f"{what}: default {default!r} must be one of {sorted(DEFAULTS)}, for an integer "
            "input with a range"
        )
    return TensorSpec(
        name=name,
        shape=tuple(shape),
        dtype=dtype,
        also=tuple(also),
        optional=optional,
        default=default,
        bounds=bounds,
        module_range=module_range,
    )


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
        """A classifier's logits (float32, [N, classes]) for a batch [N, *signature.shape]."""
        import numpy as np
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(x).to(self.device))
        return np.ascontiguousarray(out.float().cpu().numpy())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward over a batch: every input of the signature by name, [N, *its shape]
        (optional ones filled in already, see `protocol`) -> the module's outputs by name:
        a classifier's {"logits"}, or each tensor output, [N, *its shape] in its dtype and,
        where the signature says so, rescaled from the module's range to the served one."""
        import numpy as np
        import torch

        sig = self.signature
        if sig.classifier:
            return {"logits": self.predict(inputs[sig.input_name])}
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])) for t in sig.inputs]
        with torch.inference_mode():
            out = self.module(*(t.to(self.device) for t in tensors))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(sig.tensor_outputs):
            raise RuntimeError(
                f"{self.name}: the module returned {len(outs)} tensor(s) for the signature's "
                f"{len(sig.tensor_outputs)} outputs"
            )
        result = {}
        for spec, tensor in zip(sig.tensor_outputs, outs, strict=True):
            array = tensor.detach().cpu().numpy().astype(spec.dtype, copy=False)
            if spec.module_range is not None and spec.bounds is not None:
                (m0, m1), (b0, b1) = spec.module_range, spec.bounds
                array = (array - m0) * ((b1 - b0) / (m1 - m0)) + b0  # stays in spec.dtype
            rows = len(inputs[sig.input_name])
            result[spec.name] = np.ascontiguousarray(array.reshape(rows, *spec.shape))
        return result


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
