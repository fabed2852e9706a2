"""The README's main command, run the way a new user runs it."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_quickstart_trains_digits_on_loopback_s3(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rayfleet.demo"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "imported digits to s3://rayfleet-demo/datasets/digits" in out
    accuracy = float(out.split("val_accuracy: ")[1].split()[0])
    assert accuracy >= 0.95
    assert "checkpoint: s3://rayfleet-demo/runs/digits/checkpoint_e000011-" in out
    assert out.count("  s3://rayfleet-demo/runs/digits/checkpoint_e") == 3
