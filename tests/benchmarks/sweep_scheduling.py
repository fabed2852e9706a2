"""Scheduling efficiency of a sweep of many tiny trials on this machine.

Runs `rayfleet sweep` with N tiny trials (synthetic MLP, one worker, one short epoch, FIFO,
two at a time on 2 CPUs) and compares trials completed per hour with the theoretical
maximum for those trials: slots x 3600 / mean trial duration, where a trial's duration is
what Tune measured inside it (start of the trial to its last report). The ratio is the share
of slot time spent inside trials rather than between them (driver bookkeeping, placement,
trials.json writes). Target >= 0.9 (Ray's own release test reaches 0.87).

Also reported: how much of a trial is Ray Train start-up rather than training, since that
is what makes tiny *Train* trials expensive whatever the scheduler does.

    python tests/benchmarks/sweep_scheduling.py [--trials 24]
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

import yaml

SLOTS = 2


def sweep_doc(trials: int) -> dict:
    return {
        "apiVersion": "rayfleet.io/v1alpha1",
        "kind": "SweepJob",
        "metadata": {"name": "tiny"},
        "spec": {
            "trainJob": {
                "spec": {
                    "model": {
                        "recipe": "synthetic-mlp",
                        "config": {"hidden": 64, "steps": 20, "warmupSteps": 0},
                    },
                    "scaling": {"numWorkers": 1},
                    "run": {"epochs": 1, "batchSize": 32},
                }
            },
            "searchSpace": {"run.learningRate": {"loguniform": [1e-4, 1e-1]}},
            "scheduler": {"type": "fifo"},
            "numSamples": trials,
            "maxConcurrentTrials": SLOTS,
            "metric": "loss",
            "mode": "min",
        },
    }


def trial_times(sweep_dir: Path) -> list[tuple[float, float, float]]:
    """(start, end, time spent training) per trial, from Tune's result.json files."""
    out = []
    for result in sorted(sweep_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        last = rows[-1]
        steps = last["steps_per_sec"] and 20 / last["steps_per_sec"]
        out.append((last["timestamp"] - last["time_total_s"], last["timestamp"], steps))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="rayfleet-bench-") as root:
        spec = Path(root) / "tiny.yaml"
        spec.write_text(yaml.safe_dump(sweep_doc(args.trials)))
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "rayfleet.cli.main", "sweep", str(spec)],
            check=True,
            env={**os.environ, "RAYFLEET_STORAGE": root},
            stdout=subprocess.DEVNULL,
        )
        command_s = time.monotonic() - started
        times = trial_times(Path(root) / "sweeps" / "tiny")

    durations = [end - start for start, end, _ in times]
    span = max(end for _, end, _ in times) - min(start for start, _, _ in times)
    achieved = len(times) * 3600 / span
    ideal = SLOTS * 3600 / statistics.mean(durations)
    summary = {
        "trials": len(times),
        "slots": SLOTS,
        "mean_trial_s": round(statistics.mean(durations), 2),
        "mean_training_s": round(statistics.mean(t for *_, t in times), 3),
        "span_s": round(span, 1),
        "command_wall_s": round(command_s, 1),
        "trials_per_hour": round(achieved),
        "theoretical_trials_per_hour": round(ideal),
        "scheduling_efficiency": round(achieved / ideal, 3),
    }
    print(json.dumps(summary, indent=2))
    print("target (>= 0.9):", "met" if summary["scheduling_efficiency"] >= 0.9 else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
