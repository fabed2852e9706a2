"""digits-gan end to end: the shipped spec on local Ray (2 DDP workers, 2 CPUs) and a real S3
server on 127.0.0.1, for 3 epochs.

The samples must beat random noise on the classifier score by a stated margin, every
checkpoint must verify with its sample grid hashed in the manifest and both optimizers in
its state, and a run whose worker is killed must end with exactly the uninterrupted run's
metrics. The resume test is `slow`: it runs the whole training a second time (plus a worker
group restart), doubling this module's time.
"""

from __future__ import annotations

import io

import pytest
import torch

from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import list_checkpoints, verify
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.train.launcher import run_train_job

from ..conftest import BUCKET, REPO
from .launcher_events import Events, run_killing_rank1

pytestmark = pytest.mark.integration
SPEC = REPO / "jobs" / "digits-gan" / "train.yaml"
EPOCHS = 3
# Measured on the 2-core VM (seed 7): quality 0.886 after 3 epochs, noise 0.108. The test
# asks for half of that gap, so a different CPU's arithmetic can't fail it by chance.
MARGIN = 0.5


def _job(name: str):
    return load_spec(
        SPEC,
        [f"metadata.name={name}", f"spec.storage=s3://{BUCKET}", f"spec.run.epochs={EPOCHS}"],
    )


@pytest.fixture(scope="module")
def reference(ray_local, digits_uri):
    events = Events()
    return run_train_job(_job("gan-ref"), on_event=events), events


def test_samples_beat_noise_with_verified_checkpoints_holding_png_and_both_optimizers(reference):
    result, events = reference
    print(f"digits-gan {EPOCHS} epochs: {result.metrics}")  # the README's figures (pytest -s)
    metrics = result.metrics
    assert result.epoch == EPOCHS - 1 and result.attempts == 1
    assert sorted(events.epochs()) == list(range(EPOCHS))
    assert {"g_loss", "d_loss", "quality", "label_match", "coverage"} <= set(metrics)
    assert metrics["quality"] >= metrics["noise_quality"] + MARGIN, metrics
    assert any(m.startswith("scorer: digits-cnn trained in-run") for m in events.logs())

    fs = filesystem_for(_job("gan-ref").run_uri())
    checkpoints = list_checkpoints(fs, f"{BUCKET}/runs/gan-ref")
    assert len(checkpoints) == EPOCHS  # keep: 3, one per epoch
    for _, path in checkpoints:
        check = verify(fs, path)
        assert check.ok, check.reason
        listed = {f["path"] for f in check.manifest["files"]}
        assert listed == {"state.pt", "samples.png"}, listed
    meta = verify(fs, result.checkpoint_uri.removeprefix("s3://")).manifest["meta"]
    assert meta["recipe"] == "digits-gan" and meta["input"] == {"shape": [32], "dtype": "float32"}
    assert meta["noise_score"]["quality"] == pytest.approx(metrics["noise_quality"])
    assert meta["scorer"]["val_accuracy"] > 0.9

    path = result.checkpoint_uri.removeprefix("s3://")
    with fs.open_input_file(f"{path}/state.pt") as f:
        state = torch.load(io.BytesIO(f.read()), weights_only=True)
    assert state["optimizer"]["state"] and state["d_optimizer"]["state"]  # both Adams, stepped
    assert {"model", "discriminator", "scorer"} <= set(state)
    with fs.open_input_file(f"{path}/samples.png") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # a second full training and a worker-group restart: doubles this module
def test_worker_killed_mid_run_resumes_with_identical_metrics(reference):
    result = run_killing_rank1(_job("gan-killed"), after_epoch=0)
    assert result.metrics == reference[0].metrics
