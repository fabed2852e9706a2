"""The README's main command, run the way a new user runs it."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_quickstart_trains_and_sweeps_digits_on_loopback_s3(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rayfleet.demo"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "imported digits to s3://rayfleet-demo/datasets/digits" in out
    accuracy = float(out.split("val_accuracy: ")[1].split()[0])
    assert accuracy >= 0.95
    assert "checkpoint: s3://rayfleet-demo/runs/digits/checkpoint_e000011-" in out
    assert out.count("  s3://rayfleet-demo/runs/digits/checkpoint_e") == 3
    sweep = out.split("$ rayfleet sweep")[1]
    best = float(sweep.split("best: trial ")[1].split("val_accuracy=")[1].split()[0])
    assert best >= 0.9
    assert "checkpoint: s3://rayfleet-demo/sweeps/digits-sweep/" in sweep
    assert "STOPPED" in sweep  # ASHA ended at least one weak trial early
    served_line = out.split("served accuracy over HTTP: ")[1].splitlines()[0]
    served = float(served_line.split()[0])
    offline = float(served_line.split("offline evaluation: ")[1].rstrip(")"))
    assert served == offline and abs(served - best) < 1e-3
