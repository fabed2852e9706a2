"""What a compressed checkpoint records about itself, in its manifest's meta["compression"].

It lives in the manifest (not a file beside it) so it is covered by the same verification and
read in the same single GET as the rest of the meta: the loader learns from it which
transformation rebuilds the model, and a reader can trace the checkpoint to the exact source
it came from (URI plus the sha256 of the source's manifest, which pins every source file).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from rayfleet.compress.methods import METHODS, CompressError

META_KEY = "compression"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Calibration(_Doc):
    """The rows static int8 measured activation ranges on."""

    dataset: str
    split: str
    rows: int = Field(ge=1)


class Evaluation(_Doc):
    """Source and compressed model on the same rows, measured when the checkpoint was written."""

    dataset: str
    split: str
    rows: int = Field(ge=1)
    source_accuracy: float
    accuracy: float

    @property
    def delta(self) -> float:
        return self.accuracy - self.source_accuracy


class Distillation(_Doc):
    """How a distilled student was trained: its own config (what rebuilds it), the teacher's,
    the soft-label loss settings and the TrainJob that trained it (a run of the same name)."""

    student_config: dict[str, Any]
    teacher_config: dict[str, Any] = {}
    temperature: float = Field(gt=0)
    alpha: float = Field(ge=0, le=1)
    epochs: int = Field(ge=1)
    workers: int = Field(ge=1)


class Compression(_Doc):
    method: str
    # torch.backends.quantized.engine the int8 weights were packed for (None for fp16).
    engine: str | None = None
    source: str  # the source checkpoint's URI
    source_manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source_weights_bytes: int = Field(ge=1)  # the fp32 model state_dict, serialized
    weights_bytes: int = Field(ge=1)  # this checkpoint's state dict, serialized
    layers: list[str] = []  # the layer types the method rewrote
    calibration: Calibration | None = None
    # distill only: a smaller model of the same recipe, trained on the teacher's soft labels.
    distillation: Distillation | None = None
    evaluation: Evaluation | None = None
    torch_version: str = ""

    @property
    def size_ratio(self) -> float:
        return self.weights_bytes / self.source_weights_bytes

    def to_meta(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def compression_of(meta: dict[str, Any], where: str) -> Compression | None:
    """The lineage in a (verified) manifest's meta; None for an uncompressed checkpoint.

    CompressError when it is there but unusable (unknown method, malformed): loading such a
    checkpoint as plain fp32 would silently give wrong weights, so it is refused instead."""
    raw = meta.get(META_KEY)
    if raw is None:
        return None
    try:
        doc = Compression.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise CompressError(
            f"checkpoint {where}: meta.{META_KEY} is malformed ({field}: {first['msg']}); "
            "compress the source again with `rayfleet compress`"
        ) from None
    if doc.method not in METHODS:
        raise CompressError(
            f"checkpoint {where}: compressed with {doc.method!r}, which this rayfleet can't "
            f"load (it knows {', '.join(METHODS)}); upgrade rayfleet or compress again"
        )
    return doc
