"""A per-worker training loop written only against Ray Train's public API.

It is what a Ray user already has: no rayfleet import. It loads scikit-learn's digits itself,
trains an MLP with DDP on its rank's rows, resumes from `ray.train.get_checkpoint()` and
reports every epoch, rank 0 with a checkpoint folder. Seeded per (seed, epoch, rank), so a
resumed run ends with exactly the metrics of an uninterrupted one.
"""

import os
import tempfile

import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def _data(rank: int, world: int):
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    n = len(y_train) // world  # equal shards: every rank takes the same number of steps
    rows = slice(rank * n, (rank + 1) * n)
    return x_train[rows], y_train[rows], x_val, y_val


def train_loop(config: dict) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    x_train, y_train, x_val, y_val = _data(rank, world)

    torch.manual_seed(config["seed"])
    net = torch.nn.Sequential(
        torch.nn.Linear(64, config["hidden"]),
        torch.nn.ReLU(),
        torch.nn.Linear(config["hidden"], 10),
    )
    model = ray.train.torch.prepare_model(net)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])

    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, "model.pt"), weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1

    batch = config["batch_size"]
    for epoch in range(start, config["epochs"]):
        generator = torch.Generator().manual_seed(config["seed"] * 1000 + epoch * 10 + rank)
        order = torch.randperm(len(y_train), generator=generator)
        total = 0.0
        steps = len(y_train) // batch
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        with torch.no_grad():
            val_accuracy = (net(x_val).argmax(1) == y_val).float().mean().item()
        metrics = {"epoch": epoch, "train_loss": total / steps, "val_accuracy": val_accuracy}
        if rank == 0 and config.get("checkpoint", True):
            with tempfile.TemporaryDirectory() as folder:
                state = {
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                }
                torch.save(state, os.path.join(folder, "model.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
