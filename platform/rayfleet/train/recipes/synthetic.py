"""synthetic-mlp: an MLP on generated tensors, for measuring training overhead.

`timed_steps` is the measured loop; the native torchrun baseline in tests/benchmarks calls
the same function on the same model, so the ratio measures rayfleet + Ray Train and nothing
else. Data is generated on the device once: the benchmark times compute and gradient
all-reduce, not input pipelines.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rayfleet.train import session
from rayfleet.train.recipes.common import autocast, save_state


def build_model(config: dict) -> nn.Sequential:
    inputs = int(config.get("inputs", 784))
    hidden = int(config.get("hidden", 1024))
    layers = int(config.get("layers", 2))
    dims = [inputs] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims, dims[1:], strict=False):
        blocks += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(dims[-1], int(config.get("classes", 10))))


def make_batch(config: dict, batch_size: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, int(config.get("inputs", 784)), generator=g)
    y = torch.randint(0, int(config.get("classes", 10)), (batch_size,), generator=g)
    return x.to(device), y.to(device)


def flops_per_step(model: nn.Module, batch_size: int) -> float:
    """Model FLOPs of one training step: 6 x parameters x samples (forward + backward)."""
    params = sum(p.numel() for p in model.parameters())
    return 6.0 * params * batch_size


def timed_steps(model, optimizer, x, y, *, steps, warmup, device, mixed_precision, on_step=None):
    """Run warmup + steps optimizer steps; returns steady-state throughput of the timed part."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    started = first_step_at = None
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            started = time.perf_counter()
        with autocast(device, mixed_precision):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if first_step_at is None:
            first_step_at = time.time()  # wall clock: start-up benchmarks compare processes
        if on_step is not None:
            on_step(i + 1, warmup + steps, loss)
    sync()
    elapsed = time.perf_counter() - started
    return {
        "steps_per_sec": steps / elapsed,
        "samples_per_sec": steps * x.shape[0] / elapsed,
        "loss": float(loss.item()),
        "first_step_at": first_step_at,
    }


def train_loop(config: dict) -> None:
    import ray.train.torch

    ctx = session.context()
    device = ray.train.torch.get_device()
    torch.manual_seed(ctx.seed)
    model = ray.train.torch.prepare_model(build_model(config))
    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.learning_rate, momentum=0.9)
    x, y = make_batch(config, ctx.batch_size, device, ctx.seed + ctx.rank)
    steps, warmup = int(config.get("steps", 200)), int(config.get("warmupSteps", 20))
    for epoch in range(ctx.epochs):
        stats = timed_steps(
            model,
            optimizer,
            x,
            y,
            steps=steps,
            warmup=warmup,
            device=device,
            mixed_precision=ctx.mixed_precision,
            on_step=lambda s, n, loss, e=epoch: (
                session.progress_due(s, n) and session.progress(e, s, n, loss=loss.item())
            ),
        )
        stats["model_flops_per_step"] = flops_per_step(model, ctx.batch_size) * ctx.world_size
        with tempfile.TemporaryDirectory() as folder:
            keep = ctx.is_leader and ctx.should_checkpoint(epoch)
            if keep:
                save_state(Path(folder), model, optimizer, {"epoch": epoch})
            session.report(
                stats,
                epoch=epoch,
                checkpoint_dir=folder if keep else None,
                meta={"recipe": "synthetic-mlp", "model_config": config},
            )
