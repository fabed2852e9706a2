"""Pieces every torch recipe shares: seeding, precision, device, reductions, state files, and
the one classifier train/eval loop (digits-cnn, image-cnn, text-lstm, tabular-mlp).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rayfleet.data.layout import read_info
from rayfleet.lazy import lazy
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.train import session
from rayfleet.train.recipes import STATE_FILE

distill = lazy("rayfleet.train.recipes.distill")  # imports this module: a cycle, broken at use


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed that depends only on (seed, epoch, rank): an epoch replays identically on resume."""
    return (seed * 1_000_003 + epoch * 10_007 + rank * 101) % (2**63)


def seed_epoch(seed: int, epoch: int, rank: int) -> torch.Generator:
    """Reset torch's global RNG (dropout) and return a generator for this epoch's shuffle."""
    value = epoch_seed(seed, epoch, rank)
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def autocast(device: torch.device, mixed_precision: str):
    """bf16 autocast on GPU when asked; CPU always trains in fp32."""
    if device.type == "cuda" and mixed_precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum scalars across ranks (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def save_state(folder: Path, model: torch.nn.Module, optimizer, extra: dict[str, Any]) -> None:
    torch.save(
        {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), **extra},
        folder / STATE_FILE,
    )


def load_state(folder: Path, model: torch.nn.Module, optimizer) -> dict[str, Any]:
    """Load a recipe checkpoint; weights_only=True so a checkpoint can't run code."""
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state


# ------------------------------------------------------------ the shared classifier loop

# A batch transform (augmentation) drawing from the epoch's generator: (x, generator) -> x.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def dataset_info():
    """This run's dataset descriptor (classes, normalization, vocabulary)."""

    uri = session.context().dataset_uri
    return read_info(filesystem_for(uri), uri)


def class_names(info) -> list[str]:
    """The descriptor's class names; ["0", "1", ...] for descriptors written before them."""
    names = getattr(info, "class_names", None)
    return list(names) if names else [str(i) for i in range(int(info.num_classes))]


def normalization(info, size: int) -> tuple[list[float], list[float]]:
    """(mean, std) of `size` values from the descriptor; identity when it has none.

    A zero std (a constant feature or channel) becomes 1, so that value maps to 0, not inf.
    """
    norm = getattr(info, "normalization", None)
    if norm is None:
        return [0.0] * size, [1.0] * size
    mean = norm["mean"] if isinstance(norm, dict) else norm.mean
    std = norm["std"] if isinstance(norm, dict) else norm.std
    return [float(m) for m in mean], [float(s) if s > 0 else 1.0 for s in std]


def load_split(split: str, dtype: torch.dtype = torch.float32):
    """(features, labels) tensors of this worker's rows of `split` (train: equal-sized)."""
    shard = session.dataset_shard(split)
    features = torch.from_numpy(shard.features)
    return features.to(dtype) if features.dtype != dtype else features, torch.from_numpy(
        shard.labels
    )


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) before evaluating.

    DDP broadcasts them at each training forward, but the last step then updates each rank's
    copy with its own batch; evaluation runs on the unwrapped module (ranks may take different
    numbers of val batches, so no DDP collectives there) and must use the same statistics on
    every rank, the ones rank 0 checkpoints. A no-op for models without buffers (digits-cnn).
    """
    buffers = list(unwrap(model).buffers())
    if buffers and dist.is_available() and dist.is_initialized():
        for buffer in buffers:
            dist.broadcast(buffer, src=0)


def evaluate(model, features, labels, device, batch_size=256) -> tuple[float, float]:
    """Validation loss and accuracy over every rank's val rows (exact, all-reduced)."""
    model.eval()
    loss_sum = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            x = features[i : i + batch_size].to(device)
            y = labels[i : i + batch_size].to(device)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    loss_sum, correct, total = all_reduce_sum([loss_sum, correct, float(len(labels))], device)
    model.train()
    return loss_sum / max(total, 1), correct / max(total, 1)


def fit_classifier(
    model: torch.nn.Module,
    optimizer,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    device: torch.device,
    meta: dict[str, Any],
    augment: Augment | None = None,
    teacher=None,
) -> None:
    """Train a classifier with cross-entropy for the run's epochs; every recipe's loop.

    With a `teacher` (recipes.distill.Teacher, frozen) the loss is its distillation loss
    instead (`rayfleet compress --method distill`); validation stays plain cross-entropy.

    Resumes from the newest verified checkpoint, then per epoch: a shuffle (and augmentation)
    drawn from (seed, epoch, rank) only, so a resumed epoch replays exactly; step progress;
    exact all-reduced validation; a checkpoint on rank 0 when due; `session.report` with
    `meta` (what serving needs to rebuild and call the model).
    """
    ctx = session.context()
    (x_train, y_train), (x_val, y_val) = train, val
    start, first_step, carried = 0, 0, None
    if (resume := session.resume_checkpoint()) is not None:
        state = load_state(resume.path, model, optimizer)
        start, first_step = resume.next_epoch, resume.first_step(ctx.world_size)
        ranks = state.get("ranks")  # a just-in-time checkpoint: every rank's random streams
        if ranks and len(ranks) == ctx.world_size:
            carried = ranks[ctx.rank]

    steps = len(y_train) // ctx.batch_size
    for epoch in range(start, ctx.epochs):
        generator = seed_epoch(ctx.seed, epoch, ctx.rank)
        order = torch.randperm(len(y_train), generator=generator)
        loss_sum, begin = 0.0, (min(first_step, steps) if epoch == start else 0)
        if begin and carried is not None:  # same ranks: continue exactly where they were
            generator.set_state(carried["generator"])
            torch.set_rng_state(carried["rng"])
            loss_sum = carried["loss_sum"]
        for step in range(begin, steps):
            idx = order[step * ctx.batch_size : (step + 1) * ctx.batch_size]
            x, y = x_train[idx], y_train[idx]
            if augment is not None:
                x = augment(x, generator)
            x, y = x.to(device), y.to(device)
            with autocast(device, ctx.mixed_precision):
                logits = model(x).float()
                loss = F.cross_entropy(logits, y) if teacher is None else teacher.loss(logits, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            session.progress(epoch, step + 1, steps, loss=loss_sum / (step + 1))
            session.checkpoint_if_preempted(
                lambda folder, ranks, e=epoch, s=step + 1: save_state(
                    folder, model, optimizer, {"epoch": e, "step": s, "ranks": ranks}
                ),
                epoch=epoch,
                step=step + 1,
                rank_state=lambda g=generator, total=loss_sum: {
                    "generator": g.get_state(),
                    "rng": torch.get_rng_state(),
                    "loss_sum": total,
                },
                meta=meta,
            )
        # Resumed on another world size, the epoch's loss averages the steps run here.
        counted = steps - begin if begin and carried is None else steps
        (train_loss,) = all_reduce_sum([loss_sum / max(counted, 1)], device)
        broadcast_buffers(model)
        val_loss, val_acc = evaluate(unwrap(model), x_val, y_val, device)
        metrics = {
            "train_loss": train_loss / ctx.world_size,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
        }
        with tempfile.TemporaryDirectory() as folder:
            keep = ctx.is_leader and ctx.should_checkpoint(epoch)
            if keep:
                save_state(Path(folder), model, optimizer, {"epoch": epoch})
            session.report(metrics, epoch=epoch, checkpoint_dir=folder if keep else None, meta=meta)


def train_classifier(
    build_model: Callable[[dict[str, Any]], torch.nn.Module],
    model_config: dict[str, Any],
    *,
    meta: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    augment: Augment | None = None,
) -> None:
    """Every classifier recipe's loop: this rank's rows, the model seeded from the run's seed
    under DDP, Adam at the run's learning rate, then `fit_classifier`. A `distill` key in
    the config (a distillation run) is taken out before the model and meta see it and loads
    the frozen teacher it names."""
    import ray.train.torch

    ctx = session.context()
    device = ray.train.torch.get_device()
    model_config, meta, settings = distill.split_settings(model_config, meta)
    teacher = distill.load_teacher(settings, device) if settings is not None else None
    train, val = load_split("train", dtype), load_split("val", dtype)
    torch.manual_seed(ctx.seed)
    model = ray.train.torch.prepare_model(build_model(model_config))
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.learning_rate)
    fit_classifier(
        model, optimizer, train, val, device=device, meta=meta, augment=augment, teacher=teacher
    )
