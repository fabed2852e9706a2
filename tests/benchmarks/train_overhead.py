"""Training-step throughput of `rayfleet run` against native PyTorch DDP under torchrun.

Same synthetic MLP (784-1024-1024-10), batch 128 per worker, 2 workers, gloo, one thread per
worker (Ray sets OMP_NUM_THREADS=1 in its workers; torchrun gets the same). Runs alternate
(native, rayfleet, native, ...) so drift on the machine hits both alike; the figure is the
median of the per-pair ratios of steady-state steps/s. Start-up (whole-process wall time) is
reported separately, since Ray's start-up is a fixed cost, not a per-step one.

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


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_native(args) -> tuple[dict, float]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={args.workers}", str(NATIVE),
        f"--steps={args.steps}", f"--warmup={args.warmup}", f"--batch-size={args.batch_size}",
        f"--hidden={args.hidden}",
    ] + (["--gpu"] if args.gpu else [])
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True).stdout
    wall = time.perf_counter() - started
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), wall


def run_rayfleet(args, storage: str) -> tuple[dict, float]:
    from rayfleet.specs import load_spec
    from rayfleet.storage.filesystem import filesystem_for
    from rayfleet.train import record

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
    started = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True)
    wall = time.perf_counter() - started
    job = load_spec(SPEC, overrides)
    doc = record.read(filesystem_for(job.run_uri()), job.run_uri())
    return doc["result"]["metrics"], wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=5)
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
        for i in range(args.pairs):
            # Alternate which goes first so neither always runs on a warmer machine.
            order = ("native", "rayfleet") if i % 2 == 0 else ("rayfleet", "native")
            pair = {}
            for who in order:
                stats, wall = run_native(args) if who == "native" else run_rayfleet(args, store)
                pair[who] = {"steps_per_sec": stats["steps_per_sec"], "wall_s": wall,
                             "flops": stats.get("model_flops_per_step", 0.0)}
            pair["ratio"] = pair["rayfleet"]["steps_per_sec"] / pair["native"]["steps_per_sec"]
            rows.append(pair)
            print(
                f"pair {i + 1}/{args.pairs}: native {pair['native']['steps_per_sec']:.2f} steps/s "
                f"({pair['native']['wall_s']:.1f}s wall), rayfleet "
                f"{pair['rayfleet']['steps_per_sec']:.2f} steps/s "
                f"({pair['rayfleet']['wall_s']:.1f}s wall), ratio {pair['ratio']:.3f}",
                flush=True,
            )

    ratios = [r["ratio"] for r in rows]
    summary = {
        "device": "gpu" if args.gpu else "cpu",
        "workers": args.workers,
        "pairs": args.pairs,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "target": 0.99 if args.gpu else 0.98,
        "native_wall_s_median": statistics.median(r["native"]["wall_s"] for r in rows),
        "rayfleet_wall_s_median": statistics.median(r["rayfleet"]["wall_s"] for r in rows),
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
