"""A user training loop: softmax regression on digits with plain PyTorch DDP.

Shows the whole user-entrypoint contract: read your shard, resume if there is a verified
checkpoint, report each epoch (rank 0 attaches the checkpoint folder).
"""

import tempfile
from pathlib import Path

import ray.train.torch
import torch
import torch.nn.functional as F

from rayfleet.train import session


def train(config: dict) -> None:
    ctx = session.context()
    shard = session.dataset_shard("train")
    x = torch.from_numpy(shard.features).flatten(1)
    y = torch.from_numpy(shard.labels)

    torch.manual_seed(ctx.seed)
    model = ray.train.torch.prepare_model(torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(
        model.parameters(), lr=ctx.learning_rate, weight_decay=config["weightDecay"]
    )
    start = 0
    if (resume := session.resume_checkpoint()) is not None:
        state = torch.load(resume.path / "model.pt", weights_only=True)
        model.module.load_state_dict(state)
        start = resume.epoch + 1

    for epoch in range(start, ctx.epochs):
        g = torch.Generator().manual_seed(ctx.seed + epoch)
        order = torch.randperm(len(y), generator=g)
        total = 0.0
        for i in range(0, len(y) - ctx.batch_size + 1, ctx.batch_size):
            idx = order[i : i + ctx.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        with tempfile.TemporaryDirectory() as folder:
            if ctx.is_leader:
                torch.save(model.module.state_dict(), Path(folder) / "model.pt")
            session.report(
                {"train_loss": total}, epoch=epoch, checkpoint_dir=folder if ctx.is_leader else None
            )
