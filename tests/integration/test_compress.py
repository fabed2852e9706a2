"""`rayfleet compress` on a real trained run in S3: a short digits run (Ray Train, one
worker), compressed by the CLI in its own process with dynamic-int8 and fp16, then checked the
way serving sees it: the checkpoint verifies, `resolve_source` accepts the new run, and the
model `serve/loading.py` rebuilds predicts like its fp32 source on the whole val split."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from rayfleet.serve.evaluate import read_split
from rayfleet.serve.loading import load_model, resolve_source
from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import MANIFEST, verify
from rayfleet.storage.filesystem import filesystem_for, read_bytes
from rayfleet.storage.uri import parse_uri

from ..conftest import BUCKET, DIGITS_RUN, REPO

# ~80 s on the 2-core VM (Ray Train start, a 2-epoch run, two CLI processes): over the default
# run's 40 s line; the unit tests cover compress_run and the CLI refusals on a local store.
pytestmark = [pytest.mark.integration, pytest.mark.slow]
SOURCE = DIGITS_RUN
# method -> (largest weights size ratio, largest |logit difference| to the fp32 source)
EXPECT = {"dynamic-int8": (0.40, 0.5), "fp16": (0.55, 0.02)}


@pytest.fixture(scope="module")
def compressed(digits_run):
    """The source run (the session's short digits run) and `rayfleet compress -o json`
    output per method."""
    result = digits_run.result
    outputs = {}
    for method in EXPECT:
        proc = subprocess.run(
            [sys.executable, "-m", "rayfleet.cli.main", "compress", "--run", SOURCE,
             "--storage", f"s3://{BUCKET}", "--method", method, "--to", f"{SOURCE}-{method}",
             "-o", "json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs[method] = json.loads(proc.stdout)
    return result, outputs


@pytest.mark.parametrize("method", list(EXPECT))
def test_compressed_checkpoint_verifies_serves_and_predicts_like_its_source(
    compressed, digits_uri, method
):
    result, outputs = compressed
    out = outputs[method]
    source = parse_uri(result.checkpoint_uri)
    fs = filesystem_for(source)
    # Lineage: the exact source checkpoint, pinned by its manifest's sha256.
    assert out["source"] == str(source) and out["method"] == method
    expected_sha = hashlib.sha256(read_bytes(fs, f"{source.fs_path}/{MANIFEST}")).hexdigest()
    assert out["sourceManifestSha256"] == expected_sha
    new = parse_uri(out["checkpoint"])
    assert verify(filesystem_for(new), new.fs_path).ok
    # `rayfleet serve` with source.run: <to> resolves exactly this checkpoint.
    deployment = load_spec(
        REPO / "jobs" / "digits" / "serve.yaml",
        [f"spec.source.run={SOURCE}-{method}", f"spec.storage=s3://{BUCKET}"],
    )
    assert str(resolve_source(deployment).uri) == str(new)

    max_ratio, max_diff = EXPECT[method]
    assert out["sizeRatio"] <= max_ratio, out
    val = read_split(digits_uri, "val")
    features = np.array(val.features)
    fp32 = load_model(source, name="fp32").predict(features)
    small = load_model(new, name=method).predict(features)
    agree = (small.argmax(1) == fp32.argmax(1)).mean()
    print(f"{method}: size {out['sizeRatio']:.3f}x, argmax agreement {agree:.4f}, "
          f"max |logit diff| {np.abs(small - fp32).max():.4f}")  # fmt: skip
    assert agree >= 0.98, agree
    assert np.abs(small - fp32).max() <= max_diff
    evaluation = out["evaluation"]
    assert evaluation["rows"] == len(val.labels) and evaluation["split"] == "val"
    assert abs(evaluation["accuracy"] - evaluation["sourceAccuracy"]) <= 0.02
