"""ASHA against running every trial to the end (FIFO), same trials and budget, on digits.

Both sweeps sample the same configurations (same search seed, same numSamples) from the
shipped digits sweep's space, one DDP worker per trial, two trials at a time; only the
scheduler differs. Reported: epochs trained, best validation accuracy, wall time, and the
ratios. Targets: ASHA trains >= 3x fewer epochs with best accuracy within 0.01, and its
wall-time gain is within 20% of that epoch gain (trial start-up is what eats it: the
sweep's `trialLaunch` decides whether a trial starts a Ray Train run of its own).

Each round runs ASHA then FIFO on fresh storage; the medians over --rounds are reported
(ASHA's asynchronous decisions depend on the order results arrive, so one round varies).
The time gain is taken over the sweeps' own time (first trial start to last trial end, from
the trial records), and over the whole command (which includes starting Ray) beside it.

    python tests/benchmarks/sweep_schedulers.py [--samples 16] [--epochs 9] [--rounds 3]
        [--trial-launch auto|rayTrain]
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
SWEEP = REPO / "jobs" / "digits" / "sweep.yaml"


def run_sweep(
    storage: str, name: str, scheduler: str, samples: int, epochs: int, launch: str
) -> float:
    overrides = f"{{run.epochs: {epochs}, scaling.numWorkers: 1}}"
    cmd = [
        sys.executable,
        "-m",
        "rayfleet.cli.main",
        "sweep",
        str(SWEEP),
        "--set",
        f"metadata.name={name}",
        "--set",
        f"spec.scheduler.type={scheduler}",
        "--set",
        f"spec.numSamples={samples}",
        "--set",
        f"spec.trainJob.overrides={overrides}",
        "--set",
        f"spec.trialLaunch={launch}",
    ]
    started = time.monotonic()
    subprocess.run(cmd, check=True, env={**os.environ, "RAYFLEET_STORAGE": storage})
    return time.monotonic() - started


def trials_span_s(sweep_dir: Path) -> float:
    """Seconds from the first trial's start to the last one's end, from the trials' run
    records: the sweep's own time, without the command's start (Ray's included)."""
    launches = [
        json.loads(p.read_text())["usage"]["launches"]
        for p in sweep_dir.glob("*/train/record.json")
    ]
    return max(ls[-1]["ended"] for ls in launches) - min(ls[0]["started"] for ls in launches)


def one_round(samples: int, epochs: int, launch: str) -> dict:
    """ASHA then FIFO on a fresh storage root: each one's figures and the ratios."""
    from rayfleet.data.digits import import_digits
    from rayfleet.storage.uri import parse_uri
    from rayfleet.tune.results import read_best, read_table

    with tempfile.TemporaryDirectory(prefix="rayfleet-bench-") as root:
        import_digits(parse_uri(f"{root}/datasets/digits"))
        out = {}
        for scheduler in ("asha", "fifo"):
            name = f"bench-{scheduler}"
            wall = run_sweep(root, name, scheduler, samples, epochs, launch)
            uri = parse_uri(f"{root}/sweeps/{name}")
            table, best = read_table(uri), read_best(uri)
            out[scheduler] = {
                "epochs_trained": table.epochs_consumed,
                "best_val_accuracy": best.value,
                "stopped_early": table.counts().get("STOPPED", 0),
                "wall_s": round(wall, 1),
                "trials_span_s": round(trials_span_s(Path(root) / "sweeps" / name), 1),
            }
    asha, fifo = out["asha"], out["fifo"]
    summary = {
        **{f"{k}_{m}": v for k, r in out.items() for m, v in r.items()},
        "epoch_savings_x": round(fifo["epochs_trained"] / asha["epochs_trained"], 2),
        "best_accuracy_gap": round(fifo["best_val_accuracy"] - asha["best_val_accuracy"], 4),
        "wall_speedup_x": round(fifo["wall_s"] / asha["wall_s"], 2),
        "span_speedup_x": round(fifo["trials_span_s"] / asha["trials_span_s"], 2),
    }
    # How much of the epoch gain reaches the clock (a trial's start-up and bookkeeping do
    # not shrink with the epochs ASHA saves): the sweeps' own time, and the whole command's.
    summary["span_of_epoch_gain"] = round(summary["span_speedup_x"] / summary["epoch_savings_x"], 2)
    summary["wall_of_epoch_gain"] = round(summary["wall_speedup_x"] / summary["epoch_savings_x"], 2)
    print(json.dumps(summary), flush=True)
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trial-launch", default="auto", choices=["auto", "rayTrain"])
    args = p.parse_args()

    rounds = [one_round(args.samples, args.epochs, args.trial_launch) for _ in range(args.rounds)]
    summary = {
        "trialLaunch": args.trial_launch,
        "samples": args.samples,
        "epochs_per_trial": args.epochs,
        "rounds": len(rounds),
        **{f"median_{k}": statistics.median(r[k] for r in rounds) for k in rounds[0]},
    }
    print(json.dumps(summary, indent=2))
    ok = summary["median_epoch_savings_x"] >= 3 and summary["median_best_accuracy_gap"] <= 0.01
    print("target (>= 3x fewer epochs, best within 0.01):", "met" if ok else "NOT met")
    ok = summary["median_span_of_epoch_gain"] >= 0.8
    print(
        "target (the sweep's time gain within 20% of the epoch gain):", "met" if ok else "NOT met"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
