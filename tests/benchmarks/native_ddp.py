"""The native baseline: plain PyTorch DDP under torchrun, same model, batch and timed loop.

    torchrun --nproc-per-node 2 tests/benchmarks/native_ddp.py --steps 300 --warmup 30

Rank 0 prints one JSON line with the steady-state throughput. It shares `build_model`,
`make_batch` and `timed_steps` with the synthetic-mlp recipe so the only difference measured
is what rayfleet and Ray Train add around them.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from rayfleet.train.recipes.synthetic import build_model, flops_per_step, make_batch, timed_steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--mixed-precision", default="bf16")
    parser.add_argument("--report-ready", action="store_true", help="Print READY <time>.")
    args = parser.parse_args()

    backend = "nccl" if args.gpu else "gloo"
    dist.init_process_group(backend)
    rank = dist.get_rank()
    if args.gpu:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    config = {"hidden": args.hidden, "layers": args.layers}
    torch.manual_seed(args.seed)
    model = build_model(config).to(device)
    model = DDP(model, device_ids=[device.index] if args.gpu else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    x, y = make_batch(config, args.batch_size, device, args.seed + rank)
    if args.report_ready and rank == 0:  # start-up benchmark: the loop starts now
        print(f"READY {time.time()}", flush=True)
    stats = timed_steps(
        model,
        optimizer,
        x,
        y,
        steps=args.steps,
        warmup=args.warmup,
        device=device,
        mixed_precision=args.mixed_precision,
    )
    stats["model_flops_per_step"] = flops_per_step(model, args.batch_size) * dist.get_world_size()
    if rank == 0:
        print("RESULT " + json.dumps(stats), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
