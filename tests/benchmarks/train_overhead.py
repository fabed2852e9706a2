"""Training-step throughput of `rayfleet run` against native PyTorch DDP under torchrun.

Same synthetic MLP (784-1024-1024-10), batch 128 per worker, 2 workers, gloo, one thread per
worker (Ray sets OMP_NUM_THREADS=1 in its workers; torchrun gets the same). Three arms run in
rotating order within each round — torchrun, plain Ray Train (Ray's defaults, same loop, no
rayfleet) and `rayfleet run` — so drift on the machine hits all alike. The figures are the
medians of the per-round ratios of steady-state steps/s: rayfleet / torchrun, and its two
factors, Ray Train / torchrun and rayfleet / Ray Train (the target: what rayfleet adds to
the same Ray Train loop). Start-up is reported separately, as seconds from the arm's process
start to its first finished training step (rank 0's wall clock) and as whole-process wall
time: Ray's start-up is a fixed cost, not a per-step one.

    python tests/benchmarks/train_overhead.py [--pairs 5] [--steps 1000] [--gpu]

With --gpu: one worker on one GPU against native PyTorch on the same GPU, bf16, and model
FLOP utilisation against the GPU's dense bf16 peak (--peak-tflops, H100 SXM: 989).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "jobs" / "bench" / "synthetic.yaml"
NATIVE = Path(__file__).with_name("native_ddp.py")
PLAIN = Path(__file__).with_name("plain_ray_train.py")
ARMS = ("native", "ray_train", "rayfleet")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_native(args) -> tuple[dict, float]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.workers}",
        str(NATIVE),
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--batch-size={args.batch_size}",
        f"--hidden={args.hidden}",
    ] + (["--gpu"] if args.gpu else [])
    return _timed_result(cmd)


def run_plain(args) -> tuple[dict, float]:
    cmd = [
        sys.executable,
        str(PLAIN),
        f"--workers={args.workers}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--batch-size={args.batch_size}",
        f"--hidden={args.hidden}",
    ] + (["--gpu"] if args.gpu else [])
    return _timed_result(cmd)


def _timed_result(cmd: list[str]) -> tuple[dict, float]:
    """Run one arm; its `RESULT {json}` line and the whole-process wall time. Ray prefixes
    worker output reaching the driver, so the line is found anywhere in stdout/stderr."""
    started, launched = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True)
    wall = time.perf_counter() - started
    line = next(ln for ln in (proc.stdout + proc.stderr).splitlines() if "RESULT {" in ln)
    return _first_step(json.loads(line.split("RESULT ", 1)[1]), launched), wall


def _first_step(stats: dict, launched: float) -> dict:
    """Seconds from the arm's process start to its first finished step."""
    return {**stats, "first_step_s": stats["first_step_at"] - launched}


def run_rayfleet(args, storage: str) -> tuple[dict, float]:
    from rayfleet import record
    from rayfleet.specs import load_spec
    from rayfleet.storage.filesystem import filesystem_for

    overrides = [
        f"spec.storage={storage}",
        f"spec.model.config.steps={args.steps}",
        f"spec.model.config.warmupSteps={args.warmup}",
        f"spec.model.config.hidden={args.hidden}",
        f"spec.run.batchSize={args.batch_size}",
        f"spec.scaling.numWorkers={args.workers}",
        f"spec.scaling.useGpu={'true' if args.gpu else 'false'}",
    ]
    cmd = [sys.executable, "-m", "rayfleet.cli.main", "run", str(SPEC)]
    for o in overrides:
        cmd += ["--set", o]
    started, launched = time.perf_counter(), time.time()
    subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True)
    wall = time.perf_counter() - started
    job = load_spec(SPEC, overrides)
    doc = record.read(filesystem_for(job.run_uri()), job.run_uri())
    return _first_step(doc["result"]["metrics"], launched), wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5, help="Rounds of all three arms.")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--json", type=Path, help="Also write the figures here.")
    args = p.parse_args()
    if args.gpu:
        args.workers = 1

    rows = []
    with tempfile.TemporaryDirectory() as store:
        runners = {
            "native": lambda: run_native(args),
            "ray_train": lambda: run_plain(args),
            "rayfleet": lambda: run_rayfleet(args, store),
        }
        for i in range(args.pairs):
            order = ARMS[i % 3 :] + ARMS[: i % 3]  # rotate who goes first
            row = {}
            for arm in order:
                stats, wall = runners[arm]()
                row[arm] = {
                    "steps_per_sec": stats["steps_per_sec"],
                    "first_step_s": stats["first_step_s"],
                    "wall_s": wall,
                    "flops": stats.get("model_flops_per_step", 0.0),
                }
            sps = {arm: row[arm]["steps_per_sec"] for arm in ARMS}
            row["ratio"] = sps["rayfleet"] / sps["native"]
            row["ray_train_vs_native"] = sps["ray_train"] / sps["native"]
            row["rayfleet_vs_ray_train"] = sps["rayfleet"] / sps["ray_train"]
            rows.append(row)
            print(
                f"round {i + 1}/{args.pairs}: "
                + ", ".join(
                    f"{a} {sps[a]:.2f} steps/s (first step {row[a]['first_step_s']:.1f} s, "
                    f"{row[a]['wall_s']:.1f} s wall)"
                    for a in ARMS
                )
                + f"; rayfleet/native {row['ratio']:.3f}",
                flush=True,
            )

    ratios = [r["ratio"] for r in rows]
    summary = {
        "device": "gpu" if args.gpu else "cpu",
        "workers": args.workers,
        "pairs": args.pairs,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "median_ray_train_vs_native": statistics.median(r["ray_train_vs_native"] for r in rows),
        "median_rayfleet_vs_ray_train": statistics.median(r["rayfleet_vs_ray_train"] for r in rows),
        "target_rayfleet_vs_ray_train": 0.99,
        **{f"{a}_wall_s_median": statistics.median(r[a]["wall_s"] for r in rows) for a in ARMS},
        **{
            f"{a}_first_step_s_median": statistics.median(r[a]["first_step_s"] for r in rows)
            for a in ARMS
        },
    }
    if args.gpu:
        best = statistics.median(r["rayfleet"]["steps_per_sec"] for r in rows)
        flops = rows[0]["rayfleet"]["flops"]
        summary["rayfleet_bf16_mfu"] = best * flops / (args.peak_tflops * 1e12)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "pairs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
