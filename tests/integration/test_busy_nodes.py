"""What a real Ray node tells a worker about itself (rayfleet.train.busy.node): a local Ray
node started with RAY_NODE_MARKET_TYPE=spot (what the chart sets on preemptible worker
groups; Ray turns it into the `ray.io/market-type` label) and an accelerator resource (as
`ray start --resources` sets it), read from inside a Ray task. (The
training runs in test_ray_loop check the other half: this machine's CPU node says nothing,
and the price table's accelerator and market hold.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
         resources={"accelerator_type:L4": 1})

@ray.remote(num_cpus=0)
def facts():
    from rayfleet.train import busy
    return busy.node()

print("FACTS " + json.dumps(ray.get(facts.remote())))
ray.shutdown()
"""


def test_a_workers_node_says_its_market_label_and_accelerator_resource(tmp_path):
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(REPO / "platform"),
        "RAY_NODE_MARKET_TYPE": "spot",
    }
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("FACTS ")]
    assert json.loads(line.removeprefix("FACTS ")) == {"accelerator": "L4", "market": "spot"}
