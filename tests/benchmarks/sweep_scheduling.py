"""Scheduling efficiency of a sweep of many tiny trials on this machine.

Runs `rayfleet sweep` with N tiny trials (synthetic MLP, one worker, one short epoch, FIFO,
two at a time on 2 CPUs) and compares trials completed per hour with the theoretical
maximum for those trials: slots x 3600 / mean trial duration, where a trial's duration is
its slot time as the sweep driver saw it (the trial record's launch start to end). The
ratio is the share of slot time spent inside trials rather than between them (driver
bookkeeping, placement, trials.json writes). Target >= 0.9 (Ray's own release test reaches
0.87).

Two arms, one after the other in one run: `trialLaunch: auto` (these one-worker trials
train in their Tune trial's own process, train.inprocess) and `rayTrain` (a Ray Train run
per trial). Also reported: each arm's mean trial time against its training time, which is
what start-up costs a tiny trial whatever the scheduler does.

    python tests/benchmarks/sweep_scheduling.py [--trials 24] [--arms auto,rayTrain]
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
STEPS = 20


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
                        "config": {"hidden": 64, "steps": STEPS, "warmupSteps": 0},
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


def trial_times(sweep_dir: Path) -> list[tuple[float, float, float, float]]:
    """(start, end, time spent training, first step) per trial: start and end from the
    trial's run record (its launches as the sweep driver saw them: the slot is the trial's
    from start to end), training from its reported steps/s, the first step's wall-clock time
    from the recipe's `first_step_at`."""
    out = []
    for path in sorted(sweep_dir.glob("*/train/record.json")):
        record = json.loads(path.read_text())
        launches = record["usage"]["launches"]
        metrics = record["epochs"][-1]["metrics"]
        training = metrics["steps_per_sec"] and STEPS / metrics["steps_per_sec"]
        start = launches[0]["started"]
        out.append((start, launches[-1]["ended"], training, metrics["first_step_at"]))
    return out


def run_arm(trials: int, launch: str) -> dict:
    """One sweep of `trials` tiny trials with `spec.trialLaunch: launch`; its figures."""
    with tempfile.TemporaryDirectory(prefix="rayfleet-bench-") as root:
        spec = Path(root) / "tiny.yaml"
        doc = sweep_doc(trials)
        doc["spec"]["trialLaunch"] = launch
        spec.write_text(yaml.safe_dump(doc))
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "rayfleet.cli.main", "sweep", str(spec)],
            check=True,
            env={**os.environ, "RAYFLEET_STORAGE": root},
            stdout=subprocess.DEVNULL,
        )
        command_s = time.monotonic() - started
        times = trial_times(Path(root) / "sweeps" / "tiny")

    durations = [end - start for start, end, *_ in times]
    span = max(end for _, end, *_ in times) - min(start for start, *_ in times)
    # A trial's start-up: from its start to its first step. The first trial of each slot
    # starts its process; a later one may find it started (Tune reuses in-process actors).
    startup = sorted((start, first - start) for start, _, _, first in times)
    cold = [s for _, s in startup[:SLOTS]]
    warm = [s for _, s in startup[SLOTS:]]
    achieved = len(times) * 3600 / span
    ideal = SLOTS * 3600 / statistics.mean(durations)
    return {
        "trialLaunch": launch,
        "trials": len(times),
        "slots": SLOTS,
        "mean_trial_s": round(statistics.mean(durations), 2),
        "median_trial_s": round(statistics.median(durations), 2),
        "mean_training_s": round(statistics.mean(t for _, _, t, _ in times), 3),
        "first_trials_start_to_first_step_s": [round(s, 2) for s in cold],
        "later_trials_start_to_first_step_median_s": round(statistics.median(warm), 2),
        "span_s": round(span, 1),
        "command_wall_s": round(command_s, 1),
        "trials_per_hour": round(achieved),
        "theoretical_trials_per_hour": round(ideal),
        "scheduling_efficiency": round(achieved / ideal, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument(
        "--arms", default="auto,rayTrain", help="trialLaunch values to run, in this order"
    )
    args = p.parse_args()

    arms = [run_arm(args.trials, launch) for launch in args.arms.split(",")]
    for summary in arms:
        print(json.dumps(summary, indent=2))
        met = "met" if summary["scheduling_efficiency"] >= 0.9 else "NOT met"
        print(f"{summary['trialLaunch']}: target (>= 0.9) {met}")
    if len(arms) == 2:
        a, b = arms
        print(
            f"{a['trialLaunch']} / {b['trialLaunch']}: trials per hour "
            f"{a['trials_per_hour'] / b['trials_per_hour']:.2f}x, command wall time "
            f"{b['command_wall_s'] / a['command_wall_s']:.2f}x shorter"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
