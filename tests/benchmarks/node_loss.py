"""How long a TrainJob stops training when a whole worker node is lost, elastic against fixed.

A real multi-node Ray on this machine (tests/integration/ray_nodes.py): a 1-CPU token-auth
head and a 1-CPU worker node, the digits TrainJob with 2 workers (one per node) driven by
`rayfleet run` with RAY_ADDRESS, checkpoints on a loopback S3 server. After the first epoch
the worker node is SIGKILLed (its whole process group, as a preempted VM vanishes). Per round,
in alternating order:

- elastic (`minWorkers: 1`): seconds from the kill until a 1-worker group runs again;
- fixed (`numWorkers: 2`): a replacement node is started as soon as the loss is seen (what a
  node pool does at best), seconds from the kill until the 2-worker group runs again.

Both are read from Ray's state API (alive RayTrainWorker actors). Medians of the rounds.

    python tests/benchmarks/node_loss.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _round(head, arm: str, index: int) -> float:
    from tests.integration.ray_nodes import RayWorkerNode
    from tests.integration.test_multinode import (
        Driver,
        _alive_train_workers,
        _wait_for_epoch,
        _wait_for_group,
    )

    from rayfleet.retry import poll

    node = RayWorkerNode(head, name=f"bench-{arm}").start()
    extra = ["spec.scaling.minWorkers=1"] if arm == "elastic" else []
    driver = Driver(head, f"bench-{arm}-{index}", "spec.run.epochs=6", *extra)
    replacement = None
    try:
        _wait_for_epoch(driver, 0)
        killed = time.monotonic()
        node.kill()
        if arm == "elastic":
            back = _wait_for_group(head, driver, 1, timeout=300)
        else:
            poll(
                lambda: len(_alive_train_workers(head)) < 2 or None,
                timeout=120,
                interval=0.5,
                what="the loss",
            )
            replacement = RayWorkerNode(head, name="bench-replacement").start()
            back = _wait_for_group(head, driver, 2, timeout=300)
        driver.result()
        return back - killed
    finally:
        driver.stop()
        node.stop()
        if replacement is not None:
            replacement.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    os.environ.setdefault("RAYFLEET_LEASE_TTL_S", "8")
    from tests.conftest import BUCKET
    from tests.integration.ray_head import RayHead

    from rayfleet.data.digits import import_digits
    from rayfleet.storage.s3server import loopback_s3
    from rayfleet.storage.uri import parse_uri

    times: dict[str, list[float]] = {"elastic": [], "fixed": []}
    with loopback_s3(bucket=BUCKET):
        import_digits(parse_uri(f"s3://{BUCKET}/datasets/digits"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "15"
        head = RayHead(env, num_cpus=1).start()
        try:
            for index in range(args.rounds):
                order = ("elastic", "fixed") if index % 2 == 0 else ("fixed", "elastic")
                for arm in order:
                    seconds = _round(head, arm, index)
                    times[arm].append(seconds)
                    print(f"round {index + 1} {arm}: training again {seconds:.1f} s after the loss")
        finally:
            head.stop()
    summary = {
        arm: {"median_s": round(statistics.median(v), 1), "runs": [round(x, 1) for x in v]}
        for arm, v in times.items()
    }
    summary["machine"] = f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
