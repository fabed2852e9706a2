"""Work lost per preemption: training steps done again after the resume, with and without a
preemption notice.

A real multi-node Ray on this machine (tests/integration/ray_nodes.py): a 1-CPU token-auth
head and a 1-CPU worker node, a plain Ray Train loop (this file's `train_loop`, public
`ray.train` API plus `rayfleet.train.preemption.checkpoint_if_preempted` after every step)
run by `rayfleet run` with RAY_ADDRESS, two workers (one per node, `minWorkers: 1` so the
run resumes on the head alone), checkpoints every CHECKPOINT_EVERY steps to a loopback S3
server. Each step is a real MLP step sized to take a few tenths of a second here, like a
step of a real model on an accelerator. Per round, in alternating order:

- notice: at step DRAIN_AT the worker node is drained (Ray's drain API, reason PREEMPTION)
  with a NOTICE_S deadline and killed at the deadline;
- none: the worker node is killed without a notice, at a random step between DRAIN_AT and
  DRAIN_AT + CHECKPOINT_EVERY (the same rounds' seeds for every run of the benchmark).

Rank 0 logs every finished step and the step it resumed at; work lost = the last step
finished before the kill - the step resumed at (a step cut off by the kill is not counted).
Medians of the rounds.

    python tests/benchmarks/preemption.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CHECKPOINT_EVERY = 40  # steps between the loop's own checkpoints
DRAIN_AT = 20  # the step at which a round's node is preempted (the notice, or the kill window)
NOTICE_S = 15  # seconds from the notice to the node's end
TOTAL_STEPS = 100_000  # never reached: a round ends once the resumed run has trained a step


def train_loop(config: dict) -> None:
    """A plain Ray Train loop (runs on the workers): an MLP on generated batches; resumes from
    `ray.train.get_checkpoint()`; the loop's own checkpoint every `every` steps; and the one
    call that writes a just-in-time checkpoint on a preemption notice."""
    import tempfile as _tempfile

    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    from rayfleet.train.preemption import checkpoint_if_preempted

    rank = ray.train.get_context().get_world_rank()
    hidden, batch = int(config["hidden"]), int(config["batch"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    log = Path(config["log"])
    start = 0
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        getattr(model, "module", model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    if rank == 0:
        with log.open("a") as f:
            f.write(f"resume {start} {time.time():.3f}\n")

    def save(step: int):
        def to(folder: Path) -> None:
            state = {
                "model": getattr(model, "module", model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
            }
            torch.save(state, folder / "state.pt")

        return to

    for step in range(start, TOTAL_STEPS):
        g = torch.Generator().manual_seed(step * 101 + rank)
        x, y = torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if rank == 0:
            with log.open("a") as f:
                f.write(f"step {done} {time.time():.3f}\n")
        if done % int(config["every"]) == 0:
            with _tempfile.TemporaryDirectory() as folder:
                if rank == 0:
                    save(done)(Path(folder))
                ray.train.report(
                    {"step": done, "loss": loss.item()},
                    checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None,
                )
        else:
            checkpoint_if_preempted(save(done), metrics={"step": done})


def _check_cost_loop(config: dict) -> None:
    """On every worker: the cost of one notice check (Ray Train's collective) and of a step's
    call between checks (NoticeWatch bookkeeping only)."""
    import ray.train

    from rayfleet.train.preemption import NoticeWatch

    calls = int(config["calls"])
    ray.train.get_preemption_info()  # warm the collective path
    started = time.perf_counter()
    for _ in range(calls):
        ray.train.get_preemption_info()
    check_s = (time.perf_counter() - started) / calls
    watch = NoticeWatch(rank=0, get_info=lambda: None, broadcast=lambda v: v)
    watch.every, watch._next_check = 10**9, 10**9  # never due: the cost between checks
    started = time.perf_counter()
    for _ in range(100_000):
        watch.step()
    between_s = (time.perf_counter() - started) / 100_000
    if ray.train.get_context().get_world_rank() == 0:  # Result.metrics needs a checkpoint
        out = {"check_ms": check_s * 1000, "between_us": between_s * 1e6}
        Path(config["out"]).write_text(json.dumps(out))


def check_cost(calls: int = 200) -> dict:
    """Per-check and per-step cost of the notice check with 2 workers on local Ray."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            out = Path(storage) / "cost.json"
            DataParallelTrainer(
                _check_cost_loop,
                train_loop_config={"calls": calls, "out": str(out)},
                scaling_config=ScalingConfig(num_workers=2),
                run_config=RunConfig(storage_path=storage, name="check-cost"),
            ).fit()
            measured = json.loads(out.read_text())
    finally:
        ray.shutdown()
    return {
        "check_ms": round(measured["check_ms"], 2),
        "between_checks_us": round(measured["between_us"], 2),
        "calls": calls,
    }


def _steps(log: Path) -> tuple[list[tuple[int, float]], list[int]]:
    """(finished steps with times, resume steps) from rank 0's log."""
    steps, resumes = [], []
    for line in log.read_text().splitlines() if log.exists() else []:
        kind, value, at = line.split()
        (steps.append((int(value), float(at))) if kind == "step" else resumes.append(int(value)))
    return steps, resumes


def _wait(what: str, check, timeout: float, driver):
    from rayfleet.retry import poll

    def ready():
        if driver.proc.poll() is not None:
            raise AssertionError(f"driver exited before {what}: {driver.tail()}")
        return check()

    return poll(ready, timeout=timeout, interval=0.2, what=what)


def _round(head, workdir: Path, arm: str, index: int, kill_after: int) -> dict:
    from tests.integration.ray_nodes import RayWorkerNode
    from tests.integration.test_multinode import Driver

    log = workdir / f"{arm}-{index}.log"
    node = RayWorkerNode(head, name=f"bench-{arm}").start()
    driver = Driver(
        head,
        f"bench-preempt-{arm}-{index}-{int(time.time())}",
        "spec.scaling.minWorkers=1",
        f"spec.model.config.log={log}",
        spec=str(workdir / "preemption.yaml"),
    )
    try:
        _wait(f"step {DRAIN_AT}", lambda: len(_steps(log)[0]) >= DRAIN_AT or None, 600, driver)
        if arm == "notice":
            deadline = node.drain(NOTICE_S)
            time.sleep(max(0.0, deadline - time.time()))
        else:
            _wait(
                f"step {DRAIN_AT + kill_after}",
                lambda: (_steps(log)[0][-1][0] >= DRAIN_AT + kill_after) or None,
                600,
                driver,
            )
        killed_at = time.time()
        node.kill()
        _wait("the resume", lambda: len(_steps(log)[1]) >= 2 or None, 600, driver)
    finally:
        driver.stop()
        node.stop()
    steps, resumes = _steps(log)
    before = [s for s, at in steps if at <= killed_at]
    step_s = statistics.median(b - a for (_, a), (_, b) in zip(steps, steps[1:], strict=False))
    last, resumed = max(before), resumes[-1]
    return {
        "arm": arm,
        "lost_steps": last - resumed,
        "last": last,
        "resumed": resumed,
        "step_s": round(step_s, 3),
        "lost_s": round((last - resumed) * step_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--check-cost-only", action="store_true")
    args = parser.parse_args()
    cost = check_cost()
    print(json.dumps({"check_cost": cost}), flush=True)
    if args.check_cost_only:
        return

    from tests.conftest import BUCKET
    from tests.integration.ray_head import RayHead

    from rayfleet.storage.s3server import loopback_s3

    workdir = Path(tempfile.mkdtemp(prefix="rf-bench-preempt-"))
    shutil.copy(__file__, workdir / "preemption_loop.py")
    spec = {
        "apiVersion": "rayfleet.io/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "bench-preempt"},
        "spec": {
            "model": {
                "entrypoint": "preemption_loop:train_loop",
                "config": {"hidden": args.hidden, "batch": args.batch, "every": CHECKPOINT_EVERY},
            },
            "scaling": {"numWorkers": 2, "cpusPerWorker": 1},
            "checkpoint": {"keep": 5},
        },
    }
    (workdir / "preemption.yaml").write_text(json.dumps(spec))
    rng = random.Random(16)
    kills = [rng.randrange(1, CHECKPOINT_EVERY) for _ in range(args.rounds)]
    rows = []
    with loopback_s3(bucket=BUCKET):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "15"
        head = RayHead(env, num_cpus=1).start()
        try:
            for i in range(args.rounds):
                for arm in ("notice", "none") if i % 2 == 0 else ("none", "notice"):
                    row = _round(head, workdir, arm, i, kills[i])
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        finally:
            head.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {}
    for arm in ("notice", "none"):
        mine = [r for r in rows if r["arm"] == arm]
        summary[arm] = {
            f"median_{key}": statistics.median(r[key] for r in mine)
            for key in ("lost_steps", "lost_s", "step_s")
        } | {"rounds": len(mine)}
    print(
        json.dumps(
            {"checkpoint_every": CHECKPOINT_EVERY, "notice_s": NOTICE_S, "check_cost": cost}
            | summary
        )
    )


if __name__ == "__main__":
    main()
