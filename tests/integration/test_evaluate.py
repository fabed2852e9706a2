"""`rayfleet evaluate` end to end, as a user runs it: a short digits run trained into the
loopback S3 with MLflow tracking on, then the CLI in its own process. The bad inputs are
refused in one line with exit code 2 and nothing written; the real evaluation stores
evaluation.json and two PNGs beside the checkpoint (its manifest untouched), agrees with the
validation metrics the training itself reported, and lands on the run's MLflow run."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.fs as pafs
import pytest

from rayfleet.evaluation.document import CONFUSION_PNG, EVALUATION_FILE, ROC_PNG, Evaluation
from rayfleet.storage.checkpoints import MANIFEST, verify
from rayfleet.storage.filesystem import filesystem_for, read_bytes, write_bytes
from rayfleet.storage.uri import parse_uri

from ..conftest import BUCKET, DIGITS_EXPERIMENT, DIGITS_RUN, MLFLOW_FILE_STORE, REPO

pytestmark = pytest.mark.integration
TRAIN = REPO / "jobs" / "digits" / "train.yaml"
RUN, EXPERIMENT, FILE_STORE = DIGITS_RUN, DIGITS_EXPERIMENT, MLFLOW_FILE_STORE


@pytest.fixture(scope="module")
def trained(digits_run):
    """The session's short digits run (tests/conftest.py), tracked to MLflow's file store:
    (result, tracking URI)."""
    return digits_run.result, digits_run.tracking_uri


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **FILE_STORE, "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "rayfleet.cli.main", "evaluate", *args, "--storage", f"s3://{BUCKET}"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def _listing(fs, path: str) -> list[tuple[str, int]]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted((i.path, i.size) for i in infos)


def _iris_table(root) -> str:
    """scikit-learn's iris as a CSV, imported as a user would: 4 features, 3 classes."""
    from sklearn.datasets import load_iris

    from rayfleet.data.imports import ImportOptions, import_source

    data = load_iris()
    csv = root / "iris.csv"
    header = ",".join(["a", "b", "c", "d", "target"])
    np.savetxt(csv, np.column_stack([data.data, data.target]), delimiter=",", header=header,
               comments="", fmt="%.6g")  # fmt: skip
    dest = root / "iris"
    import_source(str(csv), parse_uri(str(dest)), ImportOptions(name="iris", label="target"))
    return str(dest)


def _corrupt_copy(checkpoint: str, run: str) -> None:
    """The trained checkpoint copied under runs/RUN with one byte of its weights changed."""
    src = parse_uri(checkpoint)
    fs = filesystem_for(src)
    dst = parse_uri(f"s3://{BUCKET}/runs/{run}/{src.key.rsplit('/', 1)[-1]}")
    for name in ("state.pt", MANIFEST):
        data = bytearray(read_bytes(fs, f"{src.fs_path}/{name}"))
        if name == "state.pt":
            data[-1] ^= 0xFF
        write_bytes(fs, f"{dst.fs_path}/{name}", bytes(data))


def test_evaluate_refuses_bad_input_then_stores_and_attaches_the_evaluation(
    trained, tmp_path, monkeypatch
):
    result, tracking = trained
    ckpt = parse_uri(result.checkpoint_uri)
    fs = filesystem_for(ckpt)
    manifest = read_bytes(fs, f"{ckpt.fs_path}/{MANIFEST}")
    before = _listing(fs, ckpt.fs_path)

    # Bad input: one line, exit 2, nothing written.
    _corrupt_copy(result.checkpoint_uri, "eval-corrupt")
    for args, expect in (
        (["--run", "eval-corrupt"], "run eval-corrupt: no verified checkpoint under"),
        (["--run", RUN, "--dataset", _iris_table(tmp_path)], "float32 [4] but checkpoint"),
        (["--run", RUN, "--split", "test"], "--split 'test' is unknown"),
    ):
        done = _cli(*args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stdout + done.stderr
        assert len(lines) == 1 and expect in lines[0], lines
        assert _listing(fs, ckpt.fs_path) == before

    # The run's newest verified checkpoint on the dataset it trained on (from its record).
    done = _cli("--run", RUN, "-o", "json")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = Evaluation.model_validate(json.loads(done.stdout))
    assert doc.checkpoint == result.checkpoint_uri and doc.via == f"run {RUN}"
    assert doc.manifest_sha256 == hashlib.sha256(manifest).hexdigest()
    assert doc.dataset == str(parse_uri(f"s3://{BUCKET}/datasets/digits")) and doc.split == "val"
    m = doc.metrics
    # The same weights on the same rows as the training's own validation pass.
    assert m.accuracy == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)
    assert m.log_loss == pytest.approx(result.metrics["val_loss"], abs=1e-4)
    assert m.examples == 360 == sum(map(sum, m.confusion_matrix))
    assert [sum(row) for row in m.confusion_matrix] == [c.support for c in m.per_class]
    assert len(m.per_class) == 10 and 0.5 < m.roc_auc <= 1.0

    # Stored beside the checkpoint; the checkpoint's own files untouched and still verified.
    assert read_bytes(fs, f"{ckpt.fs_path}/{MANIFEST}") == manifest
    assert verify(fs, ckpt.fs_path).ok
    added = {p.rsplit("/", 1)[-1] for p, _ in _listing(fs, ckpt.fs_path)} - {
        p.rsplit("/", 1)[-1] for p, _ in before
    }
    assert added == {EVALUATION_FILE, CONFUSION_PNG, ROC_PNG}
    stored = json.loads(read_bytes(fs, f"{ckpt.fs_path}/{EVALUATION_FILE}"))
    assert Evaluation.model_validate(stored) == doc
    from PIL import Image

    for png, name in ((doc.plots.confusion, CONFUSION_PNG), (doc.plots.roc, ROC_PNG)):
        assert png == f"{result.checkpoint_uri}/{name}"
        image = Image.open(io.BytesIO(read_bytes(fs, parse_uri(png).fs_path)))
        assert image.format == "PNG" and min(image.size) > 300

    # Attached to the run's MLflow run: the document, the headline metrics, the plots.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`rayfleet.name` = '{RUN}'"
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {EVALUATION_FILE, CONFUSION_PNG, ROC_PNG} <= artifacts
    (metric,) = client.get_metric_history(run.info.run_id, "eval_val_accuracy")
    assert metric.value == pytest.approx(m.accuracy)
