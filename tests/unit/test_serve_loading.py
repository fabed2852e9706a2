"""Resolving a deployment's source and loading checkpoints safely (local filesystem, no Ray)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rayfleet.errors import BadInputError
from rayfleet.serve.loading import ModelLoadError, load_model, resolve_source
from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import write_manifest
from rayfleet.train.recipes.digits import build_model

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "jobs" / "digits" / "serve.yaml"
META = {
    "recipe": "digits-cnn",
    "model_config": {"channels": 8, "hidden": 16, "dropout": 0.25},
    "input": {"shape": [1, 8, 8], "dtype": "float32"},
    "num_classes": 10,
}


def write_checkpoint(folder: Path, epoch: int, *, seed: int = 0, meta=None, state=None) -> Path:
    """A checkpoint as the digits recipe writes it: state.pt + manifest with the same meta."""
    folder.mkdir(parents=True)
    meta = {**META, **(meta or {})}
    if state is None:
        torch.manual_seed(seed)
        model = build_model(meta["model_config"])
        state = {"model": model.state_dict(), "optimizer": {}, "epoch": epoch}
    torch.save(state, folder / "state.pt")
    write_manifest(folder, {**meta, "epoch": epoch, "metrics": {"val_accuracy": 0.5 + epoch / 100}})
    return folder


def _deployment(storage: Path, *overrides: str):
    return load_spec(SERVE, [f"spec.storage={storage}", *overrides])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path):
    runs = tmp_path / "runs" / "digits"
    write_checkpoint(runs / "checkpoint_e000001-aa", 1, seed=1)
    write_checkpoint(runs / "checkpoint_e000002-aa", 2, seed=2)
    return tmp_path


def test_run_source_picks_newest_verified(store):
    resolved = resolve_source(_deployment(store))
    assert resolved.name == "checkpoint_e000002-aa" and resolved.via == "run digits"
    assert resolved.summary() == "checkpoint_e000002-aa (epoch 3, val_accuracy 0.52)"


def test_run_source_skips_a_corrupt_newest_and_says_why(store):
    _flip_a_byte(store / "runs/digits/checkpoint_e000002-aa/state.pt")
    resolved = resolve_source(_deployment(store))
    assert resolved.name == "checkpoint_e000001-aa"
    assert resolved.skipped == [
        "skipped checkpoint_e000002-aa: state.pt sha256 does not match manifest"
    ]


def test_run_without_verified_checkpoint_is_refused(store):
    for name in ("checkpoint_e000001-aa", "checkpoint_e000002-aa"):
        (store / "runs/digits" / name / "rayfleet-manifest.json").unlink()
    expected = r"run digits: no verified checkpoint under .*no manifest"
    with pytest.raises(ModelLoadError, match=expected) as err:
        resolve_source(_deployment(store))
    assert isinstance(err.value, BadInputError) and err.value.exit_code == 2


def test_corrupt_checkpoint_uri_is_refused(store):
    path = store / "runs/digits/checkpoint_e000002-aa"
    _flip_a_byte(path / "state.pt")
    d = _deployment(store, "spec.source.run=null", f"spec.source.checkpoint={path}")
    expected = "state.pt sha256 does not match manifest; this checkpoint is refused"
    with pytest.raises(ModelLoadError, match=expected):
        resolve_source(d)
    with pytest.raises(ModelLoadError, match="sha256 does not match"):
        load_model(str(path), name="digits")


def test_sweep_source_reads_best_json(store):
    best = store / "sweeps/digits-sweep/best.json"
    best.parent.mkdir(parents=True)
    target = store / "runs/digits/checkpoint_e000001-aa"
    doc = {"sweep": "digits-sweep", "metric": "val_accuracy", "mode": "max", "value": 0.98,
           "trial_id": "t1", "params": {}, "epoch": 1, "checkpoint": str(target)}  # fmt: skip
    best.write_text(json.dumps(doc))
    d = _deployment(store, "spec.source.run=null", "spec.source.sweep=digits-sweep")
    resolved = resolve_source(d)
    assert str(resolved.uri) == str(target)
    assert resolved.via == "sweep digits-sweep (val_accuracy=0.98)"

    _flip_a_byte(target / "state.pt")
    with pytest.raises(ModelLoadError, match="sweep digits-sweep: best checkpoint .* sha256"):
        resolve_source(d)


def test_missing_sweep_is_refused(store):
    d = _deployment(store, "spec.source.run=null", "spec.source.sweep=nope")
    with pytest.raises(ModelLoadError, match=r"sweep nope: no best.json at .*sweeps/nope/best"):
        resolve_source(d)


def test_loaded_model_matches_the_recipe_model(store):
    path = store / "runs/digits/checkpoint_e000002-aa"
    model = load_model(str(path), name="digits")
    torch.manual_seed(2)
    reference = build_model(META["model_config"]).eval()
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(model.predict(x), expected)
    assert model.version == "checkpoint_e000002-aa"
    assert model.signature.shape == (1, 8, 8) and model.signature.datatype == "FP32"


class _RunsCode:
    """A pickled object that would run code on load (writes a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_refused_by_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    path = write_checkpoint(
        tmp_path / "runs/digits/checkpoint_e000001-aa", 1, state={"model": _RunsCode(str(marker))}
    )  # the manifest verifies: the file is exactly what was written
    resolve_source(_deployment(tmp_path))
    with pytest.raises(ModelLoadError, match=r"refused by torch.load\(weights_only=True\)"):
        load_model(str(path), name="digits")
    assert not marker.exists()


def test_entrypoint_checkpoint_is_not_servable(tmp_path):
    write_checkpoint(tmp_path / "runs/digits/checkpoint_e000001-aa", 1, meta={"recipe": None})
    with pytest.raises(ModelLoadError, match="no recipe .*built-in recipes only"):
        resolve_source(_deployment(tmp_path))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    path = write_checkpoint(tmp_path / "c" / "checkpoint_e000001-aa", 1)
    meta = json.loads((path / "rayfleet-manifest.json").read_text())
    meta["meta"]["model_config"]["channels"] = 16
    (path / "rayfleet-manifest.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="weights do not fit recipe digits-cnn"):
        load_model(str(path), name="digits")
