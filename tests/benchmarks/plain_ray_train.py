"""The middle arm: plain Ray Train (Ray's defaults), no rayfleet, the same timed loop.

    python tests/benchmarks/plain_ray_train.py --workers 2 --steps 1000 --warmup 50

Separates what Ray Train costs against torchrun from what rayfleet adds on top of Ray Train.
Rank 0 prints one `RESULT {json}` line.
"""

from __future__ import annotations

import argparse
import json
import tempfile


def train_fn(config):
    import ray.train.torch
    import torch

    from rayfleet.train.recipes.synthetic import build_model, make_batch, timed_steps

    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(build_model(config["model"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = make_batch(config["model"], config["batch_size"], device, rank)
    stats = timed_steps(
        model,
        optimizer,
        x,
        y,
        steps=config["steps"],
        warmup=config["warmup"],
        device=device,
        mixed_precision="bf16",
    )
    if rank == 0:
        print("RESULT " + json.dumps(stats), flush=True)
    ray.train.report(stats)


def main() -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--gpu", action="store_true")
    args = p.parse_args()
    ray.init(include_dashboard=False)
    with tempfile.TemporaryDirectory() as storage:
        TorchTrainer(
            train_fn,
            train_loop_config={
                "model": {"hidden": args.hidden},
                "batch_size": args.batch_size,
                "steps": args.steps,
                "warmup": args.warmup,
            },
            scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu),
            run_config=RunConfig(storage_path=storage, name="plain"),
        ).fit()
    ray.shutdown()


if __name__ == "__main__":
    main()
