"""The compression methods and the layers each one rewrites, as plain data (no torch import).

A method that finds none of its layers in a model would write a "compressed" checkpoint no
smaller and no faster than its source, so that is refused up front, with the method that fits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rayfleet.errors import BadInputError


class CompressError(BadInputError):
    """A compression request can't be done as given; nothing was written."""


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    # torch.nn class names the method rewrites; a model needs at least one of them.
    targets: tuple[str, ...]
    # class names the method can't handle; a model holding one is refused.
    blocked_by: tuple[str, ...] = ()
    needs_calibration: bool = False


METHODS: dict[str, Method] = {
    "dynamic-int8": Method(
        "dynamic-int8",
        "int8 weights for Linear/LSTM layers, activations quantized on the fly (torch.ao)",
        targets=("Linear", "LSTM"),
    ),
    "static-int8": Method(
        "static-int8",
        "int8 weights and activations (FX graph mode), activation ranges calibrated on the "
        "train split; for CNNs and MLPs",
        targets=("Conv1d", "Conv2d", "Conv3d", "Linear"),
        blocked_by=("LSTM", "GRU", "RNN", "Embedding", "EmbeddingBag"),
        needs_calibration=True,
    ),
    "fp16": Method(
        "fp16",
        "half-precision weights, computed in fp32 after loading (torch's fp16 CPU path "
        "measured slower than fp32)",
        targets=("Linear", "Conv1d", "Conv2d", "Conv3d", "LSTM", "Embedding"),
    ),
    # Not a rewrite of layers: a smaller model of the same recipe trained as a TrainJob
    # (rayfleet.compress.distill); its checkpoint is a plain fp32 one, so `targets` is empty
    # (check_layers is never asked about it, and it is never suggested in place of another).
    "distill": Method(
        "distill",
        "a smaller student of the same recipe trained on the teacher's soft labels, as a "
        "data-parallel TrainJob",
        targets=(),
    ),
}
# Named in the issue, not built: said plainly instead of "unknown method".
PLANNED: dict[str, str] = {}


def method_named(name: str) -> Method:
    """The method called `name`; CompressError (one line, the choices) otherwise."""
    if name in METHODS:
        return METHODS[name]
    choices = ", ".join(METHODS)
    if name in PLANNED:
        raise CompressError(f"--method {name}: {PLANNED[name]}; use one of {choices}")
    raise CompressError(f"--method {name!r} is not a compression method; use one of {choices}")


def check_layers(method: Method, layer_types: Iterable[str], where: str) -> list[str]:
    """The layer types of a model that `method` rewrites (sorted); CompressError when there
    are none, or when the model holds a layer the method can't handle."""
    present = set(layer_types)
    blocked = sorted(present & set(method.blocked_by))
    if blocked:
        other = _fitting(present, exclude=method.name)
        raise CompressError(
            f"{where}: --method {method.name} can't quantize a model with "
            f"{', '.join(blocked)} layers{other}"
        )
    hits = sorted(present & set(method.targets))
    if not hits:
        other = _fitting(present, exclude=method.name)
        raise CompressError(
            f"{where}: nothing to compress with --method {method.name}: the model has no "
            f"{'/'.join(method.targets)} layers{other}"
        )
    return hits


def _fitting(present: set[str], *, exclude: str) -> str:
    fits = [
        m.name
        for m in METHODS.values()
        if m.name != exclude and present & set(m.targets) and not present & set(m.blocked_by)
    ]
    return f"; use --method {' or '.join(fits)}" if fits else ""
