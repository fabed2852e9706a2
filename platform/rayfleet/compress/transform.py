"""The torch side of compression: apply a method to a trained model, and rebuild the same
structure around stored weights when loading.

Stored weights are always a plain state dict that `torch.load(weights_only=True)` accepts:
int8 layers save their packed parameters as (int8 tensor with scale/zero point, bias) tuples,
which torch re-packs for the running engine on `load_state_dict`. No module is ever pickled;
loading rebuilds the recipe's fp32 model, applies the same transformation (without
calibration: the stored scales and zero points replace the placeholder ones) and then loads
the weights, so a mismatch fails in `load_state_dict` instead of running a different model.

torch 2.13 marks torch.ao.quantization as deprecated in favour of torchao; it still ships and
works on CPU (fbgemm/x86/qnnpack), so its deprecation warnings are silenced at each call.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from rayfleet.compress.lineage import Compression
from rayfleet.compress.methods import CompressError, Method

# Layer types dynamic int8 rewrites (class names as in methods.METHODS).
_DYNAMIC = {"Linear": nn.Linear, "LSTM": nn.LSTM}


def layer_types(module: nn.Module) -> set[str]:
    """Class names of every layer in a model (what methods.check_layers reads)."""
    return {type(m).__name__ for m in module.modules()}


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch.ao's deprecation notice and the observer warnings of an uncalibrated
    rebuild (its placeholder scales are overwritten by the stored ones right after)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage notice when saving int8
        yield


def select_engine(engine: str | None) -> str | None:
    """Make `engine` torch's quantized engine (default: the one torch picked here)."""
    if engine is None:
        return None
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise CompressError(
            f"int8 engine {engine!r} is not available in this torch build (it has "
            f"{', '.join(supported)}); load the checkpoint on a machine like the one that "
            "compressed it, or compress it again here"
        )
    torch.backends.quantized.engine = engine
    return engine


def default_engine() -> str:
    return torch.backends.quantized.engine


def _dynamic(module: nn.Module) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with quiet():
        return quantize_dynamic(module, set(_DYNAMIC.values()), dtype=torch.qint8)


def _prepared(module: nn.Module, engine: str, example: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    with quiet():
        return prepare_fx(module.eval(), get_default_qconfig_mapping(engine), (example,))


def _converted(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet():
        return convert_fx(prepared)


def compress_module(
    module: nn.Module,
    method: Method,
    *,
    engine: str,
    example: torch.Tensor,
    calibration: Iterable[torch.Tensor] = (),
) -> nn.Module:
    """`module` (fp32, eval) transformed by `method`; static int8 observes `calibration`."""
    module = module.eval()
    if method.name == "dynamic-int8":
        return _dynamic(module)
    if method.name == "static-int8":
        prepared = _prepared(module, engine, example)
        seen = 0
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch)
                seen += len(batch)
        if not seen:
            raise CompressError("static-int8 needs calibration rows; the train split is empty")
        return _converted(prepared)
    return module  # fp16: the structure stays; weights_of halves the stored parameters


def _int8_lstms(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(prefix, layer) of every dynamic int8 LSTM in a model."""
    from torch.ao.nn.quantized.dynamic import LSTM

    return [
        (f"{name}." if name else "", m) for name, m in module.named_modules() if type(m) is LSTM
    ]


def _with_versions(like: dict, items) -> OrderedDict:
    """A state dict of `items` that keeps `like`'s per-module versions (`_metadata`): without
    them torch reads int8 layers as an old format and asks for keys that were never saved."""
    state = OrderedDict(items)
    state._metadata = getattr(like, "_metadata", None)  # type: ignore[attr-defined]
    return state


def weights_of(module: nn.Module, method: Method) -> dict[str, object]:
    """The state dict to store: int8 as torch gives it, except LSTMs; fp16 halves floating
    parameters.

    A dynamic int8 LSTM's own state dict holds TorchScript cell objects that
    `torch.load(weights_only=True)` rightly refuses; it is stored instead as its int8 weight
    tensors (with their scales and zero points) and fp32 biases, `weight_ih_l0`, ..., which
    `load_weights` hands back to the rebuilt layer.

    fp16 keeps buffers (normalization mean/std, BatchNorm statistics) in fp32: they are few,
    and halving a feature mean of 1000.3 would shift every input by up to 0.25."""
    state = module.state_dict()
    if method.name == "dynamic-int8":
        for prefix, lstm in _int8_lstms(module):
            kept = [(k, v) for k, v in state.items() if not k.startswith(f"{prefix}_all_weight")]
            state = _with_versions(state, kept)
            for tensors in lstm._weight_bias().values():
                state.update({f"{prefix}{name}": t for name, t in tensors.items()})
        return state
    if method.name != "fp16":
        return state
    params = {name for name, _ in module.named_parameters()}
    return _with_versions(
        state,
        (
            (key, value.half() if key in params and value.is_floating_point() else value)
            for key, value in state.items()
        ),
    )


def restructure(module: nn.Module, compression: Compression, example: torch.Tensor) -> nn.Module:
    """The structure a compressed checkpoint's weights load into, built from the recipe's
    fp32 `module` the same way `compress_module` built it (placeholders for the weights)."""
    module = module.eval()
    if compression.method == "distill":  # a plain fp32 model of the student config
        return module
    select_engine(compression.engine)
    if compression.method == "dynamic-int8":
        return _dynamic(module)
    if compression.method == "static-int8":
        prepared = _prepared(module, compression.engine or default_engine(), example)
        with torch.inference_mode():
            prepared(example)  # gives every observer a range, so convert_fx has one to read
        return _converted(prepared)
    return module  # fp16: load_state_dict copies the half weights into fp32 parameters


def load_weights(module: nn.Module, weights: dict[str, object]) -> None:
    """Load stored weights into a `restructure`d model (RuntimeError when they don't fit)."""
    weights = _with_versions(weights, weights.items())
    for prefix, lstm in _int8_lstms(module):
        names = [n for tensors in lstm._weight_bias().values() for n in tensors]
        missing = [f"{prefix}{n}" for n in names if f"{prefix}{n}" not in weights]
        if missing:
            raise RuntimeError(f"Missing key(s) in state_dict: {', '.join(missing[:4])}")
        lstm.set_weight_bias({n: weights.pop(f"{prefix}{n}") for n in names})
        # The layer now holds the stored weights; its packed form completes the state dict.
        packed = lstm.state_dict(prefix=prefix)
        weights.update({k: v for k, v in packed.items() if k.startswith(f"{prefix}_all_weight")})
    module.load_state_dict(weights)
