"""Start-up latency: from process start to the first training step, phase by phase.

Three arms, in rotating order each round, on the same tiny synthetic MLP (2 workers, gloo):

- torchrun: native PyTorch DDP (tests/benchmarks/native_ddp.py prints when its loop starts);
- `rayfleet run` on an embedded Ray: the launcher's StartupClock phases (`run -o json`,
  `startupS`), all counted from process start: preflight (interpreter + imports), ray
  (embedded Ray start), worker group (Ray Train controller, placement group, worker
  processes, process group), training loop (the loop entered), first step;
- `rayfleet submit --follow` to a warm token-auth `ray start --head` (started once, before
  the rounds): wall time from the command's start to the driver's "starting: first step"
  line, with the driver's own phases from the lines it prints;
- `rayfleet sweep` of one trial of the same loop on one worker (trained in the trial's own
  process, `trialLaunch: auto`): the trial's start and its first step, from the command's
  start.

    python tests/benchmarks/startup.py [--rounds 3] [--no-submit]

Prints the medians side by side and the ratio rayfleet run / torchrun (target <= 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SPEC = REPO / "jobs" / "bench" / "synthetic.yaml"
NATIVE = Path(__file__).with_name("native_ddp.py")
TINY = ["--set=spec.model.config.steps=20", "--set=spec.model.config.warmupSteps=2"]
_PHASE_LINE = re.compile(r"starting: (?P<phase>[a-z ]+) \((?P<s>[\d.]+) s\)")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def torchrun() -> dict[str, float]:
    """Seconds from launch to rank 0's first step (`READY <epoch time>` line)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += [str(NATIVE), "--steps=20", "--warmup=2", "--report-ready"]
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True).stdout
    ready = float(next(ln for ln in out.splitlines() if ln.startswith("READY ")).split()[1])
    return {"first step": ready - started}


def rayfleet_run(storage: str, name: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "rayfleet", "run", str(SPEC), "-o", "json", *TINY]
    cmd += [f"--set=spec.storage={storage}", f"--set=metadata.name={name}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=True)
    return json.loads(proc.stdout)["startupS"]  # from process start (Popen: a few ms before)


def rayfleet_submit(head, storage: str, name: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "rayfleet", "submit", str(SPEC), "--address", head.address]
    cmd += ["--follow", *TINY, f"--set=spec.storage={storage}", f"--set=metadata.name={name}"]
    env = _env(RAY_AUTH_TOKEN=head.token)
    started = time.time()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    phases: dict[str, float] = {}
    for line in proc.stdout:
        if "submitted " in line and "submitted" not in phases:
            phases["submitted"] = time.time() - started
        if m := _PHASE_LINE.search(line):
            phases[f"driver: {m['phase']}"] = float(m["s"])
            if m["phase"] == "first step":
                phases["first step"] = time.time() - started
    if proc.wait() != 0:
        raise RuntimeError(f"submit failed: {cmd}")
    return phases


def rayfleet_sweep(storage: str, name: str) -> dict[str, float]:
    """A one-trial sweep of the same loop (one worker, in the trial's process): from the
    command's start to the trial's start (the sweep driver, Ray, Tune) and to its first
    step, from the trial's run record and the recipe's `first_step_at`."""
    doc = {
        "apiVersion": "rayfleet.io/v1alpha1",
        "kind": "SweepJob",
        "metadata": {"name": name},
        "spec": {
            "trainJob": {
                "path": str(SPEC),
                # (TINY, as overrides: the same 20 steps after 2 warm-up steps)
                "overrides": {
                    "scaling.numWorkers": 1,
                    "model.config.steps": 20,
                    "model.config.warmupSteps": 2,
                },
            },
            "searchSpace": {"run.learningRate": {"choice": [0.01]}},
            "scheduler": {"type": "fifo"},
            "numSamples": 1,
            "metric": "loss",
            "mode": "min",
        },
    }
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "sweep.yaml"
        spec.write_text(json.dumps(doc))  # (JSON is YAML)
        cmd = [sys.executable, "-m", "rayfleet", "sweep", str(spec)]
        started = time.time()
        env = _env(RAYFLEET_STORAGE=storage)
        subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    (record,) = Path(storage, "sweeps", name).glob("*/train/record.json")
    stored = json.loads(record.read_text())
    trial = stored["usage"]["launches"][0]["started"]
    first = stored["epochs"][0]["metrics"]["first_step_at"]
    return {"trial started": trial - started, "first step": first - started}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-submit", action="store_true", help="Skip the cluster arm.")
    args = p.parse_args()

    rows: dict[str, list[dict[str, float]]] = {
        a: [] for a in ("torchrun", "run", "submit", "sweep")
    }
    head = None
    with tempfile.TemporaryDirectory() as store:
        if not args.no_submit:
            from tests.integration.ray_head import RayHead

            head = RayHead(_env(RAYFLEET_STORAGE=store)).start()
        try:
            arms = {
                "torchrun": lambda i: torchrun(),
                "run": lambda i: rayfleet_run(store, f"startup-run-{i}"),
                "submit": lambda i: rayfleet_submit(head, store, f"startup-submit-{i}"),
                "sweep": lambda i: rayfleet_sweep(store, f"startup-sweep-{i}"),
            }
            names = [a for a in arms if a != "submit" or head is not None]
            for i in range(args.rounds):
                for arm in names[i % len(names) :] + names[: i % len(names)]:
                    rows[arm].append(arms[arm](i))
                    print(f"round {i + 1} {arm}: {json.dumps(rows[arm][-1])}", flush=True)
        finally:
            if head is not None:
                head.stop()

    print(f"\nmedian of {args.rounds} rounds, seconds from the command's start:")
    for arm, found in rows.items():
        if not found:
            continue
        phases = list(dict.fromkeys(k for row in found for k in row))
        cells = [f"{k} {statistics.median(r[k] for r in found if k in r):.1f}" for k in phases]
        print(f"  {arm:9s} " + " | ".join(cells))
    first = {a: statistics.median(r["first step"] for r in rows[a]) for a in rows if rows[a]}
    print(f"rayfleet run / torchrun (first step): {first['run'] / first['torchrun']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
