"""Pieces every torch recipe shares: seeding, precision, device, reductions, state files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rayfleet.train.recipes import STATE_FILE


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
