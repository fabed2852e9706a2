"""The worker side of `rayfleet compress --method distill`: a frozen teacher in the classifier loop.

A distillation run is an ordinary run of the teacher's recipe with a smaller model config and
one more config key, `distill` (the teacher checkpoint URI, temperature, alpha), which
`rayfleet.compress.distill` puts there. `train_classifier` takes that key out of the config
before the model is built and before the config lands in any checkpoint meta, so the student
checkpoint records exactly the config that rebuilds it and serving never sees the key.

Each rank loads its own copy of the teacher the way a replica loads a served model (manifest
verified first, `torch.load(weights_only=True)`), in eval mode with gradients off. The teacher
is frozen and draws no random numbers (no dropout in eval mode), so the loop's determinism and
exact-resume guarantees hold unchanged: a resumed epoch sees the same batches, the same
teacher logits and the same dropout masks.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rayfleet.compress.distill import DISTILL_KEY  # the model.config key (driver side)
from rayfleet.serve.loading import fetch_verified, load_verified
from rayfleet.storage.uri import parse_uri


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, y).

    Hinton et al.'s soft-label loss: the T^2 factor keeps the soft term's gradients on the
    same scale as the hard term's whatever T is (softening by T shrinks them by 1/T^2). KL is
    averaged over the batch ("batchmean"), which is the true KL divergence per example."""
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student, labels)
    return alpha * t * t * soft + (1.0 - alpha) * hard


@dataclass
class Teacher:
    """A frozen teacher model and the loss settings it is used with."""

    module: torch.nn.Module
    temperature: float
    alpha: float

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            teacher_logits = self.module(x).float()
        return distill_loss(
            student_logits, teacher_logits, y, temperature=self.temperature, alpha=self.alpha
        )


def split_settings(
    model_config: dict[str, Any], meta: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(model_config, meta) without the `distill` key, and the teacher settings (or None).

    The recipe puts its config into the checkpoint meta as `model_config`; the key is removed
    there too, so the student checkpoint rebuilds as a plain model of the student config."""
    settings = model_config.get(DISTILL_KEY)
    if settings is None:
        return model_config, meta, None
    clean = {k: v for k, v in model_config.items() if k != DISTILL_KEY}
    stored = meta.get("model_config")
    if isinstance(stored, dict):
        meta = {**meta, "model_config": {k: v for k, v in stored.items() if k != DISTILL_KEY}}
    return clean, meta, dict(settings)


def load_teacher(settings: dict[str, Any], device: torch.device) -> Teacher:
    """This rank's teacher, loaded from its verified checkpoint with serving's safe loader."""

    uri = parse_uri(str(settings["teacher"]))
    with tempfile.TemporaryDirectory(prefix="rayfleet-teacher-") as tmp:
        manifest = fetch_verified(uri, tmp)
        loaded = load_verified(Path(tmp), manifest, str(uri), name="teacher", device=str(device))
    module = loaded.module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return Teacher(
        module=module,
        temperature=float(settings.get("temperature", 4.0)),
        alpha=float(settings.get("alpha", 0.7)),
    )
