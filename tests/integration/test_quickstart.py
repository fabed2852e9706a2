"""The README's main command, run the way a new user runs it (`-o json` for the checks)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_quickstart_trains_and_sweeps_digits_on_loopback_s3(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rayfleet.demo", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # the only thing on stdout; progress went to stderr
    assert "$ rayfleet sweep" in proc.stderr
    assert doc["dataset"]["uri"] == "s3://rayfleet-demo/datasets/digits"
    assert doc["dataset"]["rows"]["train"] > 0 and doc["dataset"]["rows"]["val"] > 0
    run = doc["run"]
    assert run["metrics"]["val_accuracy"] >= 0.95
    assert run["checkpointUri"].startswith("s3://rayfleet-demo/runs/digits/checkpoint_e000011-")
    assert len(doc["checkpoints"]) == 3
    assert all(
        c.startswith("s3://rayfleet-demo/runs/digits/checkpoint_e") for c in doc["checkpoints"]
    )
    best = doc["sweep"]["best"]
    assert best["value"] >= 0.9
    assert best["checkpoint"].startswith("s3://rayfleet-demo/sweeps/digits-sweep/")
    states = [t["state"] for t in doc["sweep"]["trials"]]
    assert "STOPPED" in states  # ASHA ended at least one weak trial early
    served, offline = doc["served"]["accuracy"], doc["offline"]["accuracy"]
    assert served == offline and abs(served - best["value"]) < 1e-3
