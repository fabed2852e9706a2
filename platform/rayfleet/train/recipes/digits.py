"""digits-cnn: a small CNN on scikit-learn's 8x8 handwritten digits, data-parallel with DDP.

The quickstart recipe. Deterministic for a fixed seed: model init from the seed, each
epoch's shuffle and dropout from (seed, epoch, rank), state checkpointed at epoch ends, so an
interrupted-and-resumed run ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rayfleet.train import session
from rayfleet.train.recipes.common import (
    all_reduce_sum,
    autocast,
    load_state,
    save_state,
    seed_epoch,
)


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 32, hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels * 2, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(channels * 2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(torch.flatten(x, 1))
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


def build_model(config: dict) -> DigitsCNN:
    return DigitsCNN(
        channels=int(config.get("channels", 32)),
        hidden=int(config.get("hidden", 128)),
        dropout=float(config.get("dropout", 0.25)),
    )


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


def train_loop(config: dict) -> None:
    import ray.train.torch

    ctx = session.context()
    device = ray.train.torch.get_device()
    train = session.dataset_shard("train")
    val = session.dataset_shard("val")
    x_train, y_train = torch.from_numpy(train.features), torch.from_numpy(train.labels)
    x_val, y_val = torch.from_numpy(val.features), torch.from_numpy(val.labels)

    torch.manual_seed(ctx.seed)
    model = ray.train.torch.prepare_model(build_model(config))
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.learning_rate)

    start = 0
    if (resume := session.resume_checkpoint()) is not None:
        load_state(resume.path, model, optimizer)
        start = resume.epoch + 1

    steps = len(y_train) // ctx.batch_size
    for epoch in range(start, ctx.epochs):
        order = torch.randperm(len(y_train), generator=seed_epoch(ctx.seed, epoch, ctx.rank))
        loss_sum = 0.0
        for step in range(steps):
            idx = order[step * ctx.batch_size : (step + 1) * ctx.batch_size]
            x, y = x_train[idx].to(device), y_train[idx].to(device)
            with autocast(device, ctx.mixed_precision):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            session.progress(epoch, step + 1, steps, loss=loss_sum / (step + 1))
        (train_loss,) = all_reduce_sum([loss_sum / max(steps, 1)], device)
        val_loss, val_acc = evaluate(model, x_val, y_val, device)
        metrics = {
            "train_loss": train_loss / ctx.world_size,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
        }
        with tempfile.TemporaryDirectory() as folder:
            keep = ctx.is_leader and ctx.should_checkpoint(epoch)
            if keep:
                save_state(Path(folder), model, optimizer, {"epoch": epoch})
            session.report(
                metrics,
                epoch=epoch,
                checkpoint_dir=folder if keep else None,
                meta={
                    "recipe": "digits-cnn",
                    "model_config": config,
                    "input": {"shape": [1, 8, 8], "dtype": "float32"},
                    "num_classes": 10,
                },
            )
