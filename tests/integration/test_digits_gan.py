"""digits-gan end to end: the shipped spec on local Ray (2 DDP workers, 2 CPUs) and a real S3
server on 127.0.0.1, for 3 epochs.

The samples must beat random noise on the classifier score by a stated margin, every
checkpoint must verify with its sample grid hashed in the manifest and both optimizers in
its state, and a run whose worker is killed must end with exactly the uninterrupted run's
metrics. The resume test is `slow`: it runs the whole training a second time (plus a worker
group restart), doubling this module's time.

The trained generator is then served as a user serves it (`rayfleet serve` in its own
process, its own Ray and Serve) and asked for images by the stock `tritonclient.http` client
with its defaults and by `rayfleet predict`; the images must be the generator's own for
those latents and labels, and show the digits asked for to the run's scorer.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import download_verified, list_checkpoints, verify
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from rayfleet.train.launcher import run_train_job
from rayfleet.train.recipes import digits_gan as gan
from rayfleet.train.recipes.digits import build_model as build_cnn

from ..conftest import BUCKET, REPO
from .launcher_events import Events, run_killing_rank1
from .serving import digits_spec, start_serve

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


# ------------------------------------------------------------------------------ serving

MODEL = "digits-gan"


@pytest.fixture(scope="module")
def served(reference, tmp_path_factory):
    """`rayfleet serve` of the reference run's newest verified checkpoint, batching on."""
    doc = digits_spec(
        source={"run": "gan-ref"}, storage=f"s3://{BUCKET}", replicas=1, cpusPerReplica=0.5,
        batching={"maxBatchSize": 16, "batchWaitTimeoutS": 0.002},
    )  # fmt: skip
    doc["metadata"]["name"] = MODEL
    srv = start_serve(tmp_path_factory.mktemp("serve-gan"), doc)
    yield srv
    srv.stop()


def _trained(checkpoint_uri: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The checkpoint's generator and the run's scorer, loaded directly (no serving code)."""
    uri = parse_uri(checkpoint_uri)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = download_verified(filesystem_for(uri), uri.fs_path, tmp)
        state = torch.load(Path(tmp) / "state.pt", weights_only=True)
    generator = gan.build_model(manifest["meta"]["model_config"])
    generator.load_state_dict(state["model"])
    scorer = build_cnn(state["scorer"]["config"])
    scorer.load_state_dict(state["scorer"]["state"])
    return generator.eval(), scorer.eval()


def test_served_generator_answers_tritonclient_with_its_own_images(reference, served):
    """tritonclient.http with its defaults: binary latents and labels in, binary images out."""
    import tritonclient.http as triton

    result, _ = reference
    rows = 100
    z = np.random.default_rng(11).standard_normal((rows, 32)).astype(np.float32)
    labels = np.arange(rows, dtype=np.int64) % 10
    client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
    try:
        meta = client.get_model_metadata(MODEL)
        latent, label = (
            triton.InferInput("latent", [rows, 32], "FP32"),
            triton.InferInput("label", [rows], "INT64"),
        )
        latent.set_data_from_numpy(z)
        label.set_data_from_numpy(labels)
        answer = client.infer(MODEL, [latent, label])
    finally:
        client.close()
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("latent", "FP32", [-1, 32]),
        ("label", "INT64", [-1]),
    ]
    assert meta["outputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["versions"] == [result.checkpoint_uri.rstrip("/").rsplit("/", 1)[-1]]
    images = answer.as_numpy("image")
    assert images.shape == (rows, 1, 8, 8) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0

    generator, scorer = _trained(result.checkpoint_uri)
    with torch.no_grad():
        local = gan.to_unit(generator(torch.from_numpy(z), torch.from_numpy(labels))).numpy()
        match = (scorer(torch.from_numpy(images.copy())).argmax(1).numpy() == labels).mean()
    np.testing.assert_allclose(images, local, rtol=1e-5, atol=1e-6)
    print(f"served digits-gan: scorer label match {match:.3f}")  # pytest -s
    # The run's own label_match on its fixed latents was ~0.9 after 3 epochs (noise: ~0.1).
    assert match >= 0.7, match


def test_predict_sends_latents_and_the_server_refuses_a_bad_label(served, tmp_path):
    z = np.random.default_rng(12).standard_normal((3, 32)).astype(np.float32)
    np.save(tmp_path / "latents.npy", z)
    done = served.cli("predict", MODEL, "--input", str(tmp_path / "latents.npy"), "-o", "json")
    assert done.returncode == 0, done.stderr
    (image,) = json.loads(done.stdout)["outputs"]
    assert (image["name"], image["shape"]) == ("image", [3, 1, 8, 8])

    request = {
        "inputs": [
            {"name": "latent", "shape": [3, 32], "datatype": "FP32", "data": z.tolist()},
            {"name": "label", "shape": [3], "datatype": "INT32", "data": [1, 2, 10]},
        ]
    }
    (tmp_path / "bad.json").write_text(json.dumps(request))
    refused = served.cli("predict", MODEL, "--input", str(tmp_path / "bad.json"))
    assert refused.returncode == 2, refused.stdout
    assert "input 'label' has value 10; it takes whole numbers from 0 to 9" in refused.stderr
