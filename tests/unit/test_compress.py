"""`rayfleet compress` without Ray: method choice, the lineage document, refusals that write
nothing, and static int8 end to end on a local store (checkpoints written as the recipes
write them, digits data imported for real)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rayfleet.cli.main import app
from rayfleet.compress.job import compress_run
from rayfleet.compress.lineage import META_KEY, Compression, compression_of
from rayfleet.compress.methods import METHODS, CompressError, check_layers, method_named
from rayfleet.serve.loading import ModelLoadError, load_model
from rayfleet.storage.checkpoints import MANIFEST, newest_verified, verify, write_manifest
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from rayfleet.train.recipes.digits import build_model

from .test_serve_loading import META, write_checkpoint

pytestmark = pytest.mark.unit
SHA = "ab" * 32


def _lineage(**changes) -> Compression:
    doc = {
        "method": "dynamic-int8",
        "engine": "x86",
        "source": "s3://b/runs/d/checkpoint_e1",
        "source_manifest_sha256": SHA,
        "source_weights_bytes": 1000,
        "weights_bytes": 300,
    }
    return Compression(**{**doc, **changes})


# ----------------------------------------------------------------------------- methods


def test_unknown_methods_name_the_choices():
    with pytest.raises(CompressError, match=r"'int4' is not a compression method.*dynamic-int8"):
        method_named("int4")
    assert method_named("fp16") is METHODS["fp16"]
    assert method_named("distill") is METHODS["distill"]  # built: tests in test_compress_distill
    assert CompressError.exit_code == 2


def test_a_model_with_nothing_to_quantize_is_refused_with_the_method_that_fits():
    conv_only = {"Conv2d", "ReLU", "MaxPool2d"}
    with pytest.raises(CompressError, match=r"nothing to compress with --method dynamic-int8.*"
                       r"use --method static-int8 or fp16"):  # fmt: skip
        check_layers(METHODS["dynamic-int8"], conv_only, "run x")
    assert check_layers(METHODS["static-int8"], conv_only, "run x") == ["Conv2d"]
    with pytest.raises(CompressError, match=r"can't quantize a model with Embedding, LSTM layers;"
                       r" use --method dynamic-int8 or fp16"):  # fmt: skip
        check_layers(METHODS["static-int8"], {"Embedding", "LSTM", "Linear"}, "run t")


# ----------------------------------------------------------------------------- lineage


def test_lineage_round_trips_through_the_manifest_meta():
    doc = _lineage(layers=["Linear"])
    meta = {"recipe": "digits-cnn", META_KEY: doc.to_meta()}
    assert "sourceManifestSha256" in meta[META_KEY] and "calibration" not in meta[META_KEY]
    assert compression_of(json.loads(json.dumps(meta)), "ck") == doc
    assert doc.size_ratio == pytest.approx(0.3)
    assert compression_of({"recipe": "digits-cnn"}, "ck") is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**_lineage().to_meta(), "sourceManifestSha256": "nope"}, "sourceManifestSha256"),
        ({**_lineage().to_meta(), "method": "int4"}, "compressed with 'int4'"),
        ({**_lineage().to_meta(), "extra": 1}, "extra"),
    ],
)
def test_a_malformed_lineage_is_refused_not_loaded_as_fp32(raw, message):
    with pytest.raises(CompressError, match=message):
        compression_of({META_KEY: raw}, "ck")


def test_the_dataset_a_stored_spec_names_resolves_under_its_storage_or_as_a_uri(tmp_path):
    from rayfleet.record import dataset_in

    root = parse_uri(str(tmp_path))
    assert dataset_in({"dataset": "digits"}, root) == root.join("datasets", "digits")
    assert str(dataset_in({"dataset": "s3://bucket/data/tab"}, root)) == "s3://bucket/data/tab"
    assert dataset_in({}, root) is None and dataset_in({"dataset": ""}, root) is None


# ------------------------------------------------------------------ refusals (CLI, exit 2)


@pytest.fixture
def store(tmp_path):
    write_checkpoint(tmp_path / "runs" / "digits" / "checkpoint_e000001-aa", 1, seed=1)
    return tmp_path


def _cli(store: Path, *args: str):
    result = CliRunner().invoke(app, ["compress", "--storage", str(store), *args])
    return result.exit_code, result.output.strip()


def _runs(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "runs").iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "digits", "--method", "int4", "--to", "d8"], "not a compression method"),
        (["--run", "missing", "--method", "fp16", "--to", "d8"], "run missing: no verified"),
        (["--run", "digits", "--method", "fp16", "--to", "Bad_Name"], "not a valid run name"),
        (["--run", "digits", "--method", "fp16", "--to", "digits"], "that is the source run"),
        (["--run", "digits", "--method", "static-int8", "--to", "d8"], "--dataset NAME_OR_URI"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(store, args, message):
    code, out = _cli(store, *args)
    assert code == 2, out
    assert message in out and len(out.splitlines()) == 1, out
    assert _runs(store) == ["digits"]


def test_static_int8_on_an_lstm_model_is_refused_before_anything_is_written(tmp_path):
    config = {"embed": 8, "hidden": 8, "vocab_size": 20, "num_classes": 3}
    meta = {"recipe": "text-lstm", "model_config": config, "num_classes": 3,
            "input": {"shape": [16], "dtype": "int64"}}  # fmt: skip
    from rayfleet.train.recipes.text_lstm import build_model as build_lstm

    folder = tmp_path / "runs" / "text" / "checkpoint_e000000-aa"
    write_checkpoint(folder, 0, meta=meta, state={"model": build_lstm(config).state_dict()})
    code, out = _cli(tmp_path, "--run", "text", "--method", "static-int8", "--to", "t8",
                     "--dataset", str(tmp_path / "nowhere"))  # fmt: skip
    assert code == 2 and "can't quantize a model with Embedding, LSTM layers" in out, out
    assert _runs(tmp_path) == ["text"]


def test_an_existing_destination_needs_overwrite(store):
    assert _cli(store, "--run", "digits", "--method", "fp16", "--to", "d16")[0] == 0
    first = newest_verified_name(store, "d16")
    code, out = _cli(store, "--run", "digits", "--method", "fp16", "--to", "d16")
    assert code == 2 and "already exists" in out and "--overwrite" in out, out
    assert newest_verified_name(store, "d16") == first
    assert _cli(store, "--run", "digits", "--method", "fp16", "--to", "d16", "--overwrite")[0] == 0
    names = [p.name for p in (store / "runs" / "d16").iterdir()]
    assert len(names) == 1 and names[0] != first, "replaced, not added beside the old one"


def newest_verified_name(store: Path, run: str) -> str:
    uri = parse_uri(str(store / "runs" / run))
    ref, _ = newest_verified(filesystem_for(uri), uri.fs_path)
    assert ref is not None
    return ref.name


def test_compressing_a_compressed_run_is_refused(store):
    assert _cli(store, "--run", "digits", "--method", "dynamic-int8", "--to", "d8")[0] == 0
    code, out = _cli(store, "--run", "d8", "--method", "fp16", "--to", "d8-16")
    assert code == 2 and "already compressed (dynamic-int8" in out, out


def test_a_tampered_lineage_refuses_to_load(store, tmp_path):
    assert _cli(store, "--run", "digits", "--method", "dynamic-int8", "--to", "d8")[0] == 0
    folder = next((store / "runs" / "d8").iterdir())
    meta = json.loads((folder / MANIFEST).read_text())["meta"]
    meta[META_KEY]["method"] = "int3"
    write_manifest(folder, meta)  # files still verify: only the lineage is wrong
    with pytest.raises(ModelLoadError, match="compressed with 'int3'"):
        load_model(str(folder), name="d8")


@pytest.mark.parametrize("method", ["dynamic-int8", "static-int8"])
def test_int8_weights_missing_a_tensor_are_refused_in_one_line(tmp_path, method):
    """A state dict that verifies but lacks a tensor the int8 layer needs (torch's int8 layers
    pop their keys without checking: a KeyError, not torch's usual RuntimeError)."""
    from rayfleet.compress import transform

    config, shape = {"channels": 8, "hidden": 16}, [1, 8, 8]
    compressed = transform.compress_module(
        build_model(config),
        METHODS[method],
        engine=transform.default_engine(),
        example=torch.zeros(1, *shape),
        calibration=[torch.randn(8, *shape)],
    )
    weights = transform.weights_of(compressed, METHODS[method])
    del weights["fc2.scale" if method == "static-int8" else "fc1._packed_params._packed_params"]
    with transform.quiet():
        torch.save({"model": weights}, tmp_path / "state.pt")
    lineage = _lineage(method=method, engine=transform.default_engine())
    write_manifest(tmp_path, {**META, "model_config": config, META_KEY: lineage.to_meta()})
    with pytest.raises(ModelLoadError, match=f"weights do not fit recipe digits-cnn compressed "
                       f"with {method}"):  # fmt: skip
        load_model(str(tmp_path), name="d")


# ------------------------------------------------------- static int8 on a local store


def test_static_int8_calibrates_on_train_and_serves_close_to_its_source(tmp_path):
    """A digits-cnn fitted for two quick epochs (so activations have real ranges), compressed
    with static int8 calibrated on the imported train split, loaded by serving's loader."""
    from rayfleet.data.digits import import_digits
    from rayfleet.serve.evaluate import read_split

    data = parse_uri(str(tmp_path / "datasets" / "digits"))
    import_digits(data)
    train, val = read_split(data, "train"), read_split(data, "val")
    torch.manual_seed(0)
    model = build_model(META["model_config"])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.from_numpy(np.array(train.features)), torch.from_numpy(np.array(train.labels))
    for _ in range(2):
        for i in range(0, len(y), 64):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    source = tmp_path / "runs" / "digits" / "checkpoint_e000002-aa"
    write_checkpoint(source, 2, state={"model": model.state_dict()})

    result = compress_run("digits", storage=parse_uri(str(tmp_path)), method="static-int8",
                          to="d-static", dataset="digits")  # fmt: skip
    lineage = result.compression
    assert lineage.calibration is not None and lineage.calibration.rows == 512
    assert lineage.source == str(parse_uri(str(source)))
    assert (
        lineage.source_manifest_sha256
        == hashlib.sha256((source / MANIFEST).read_bytes()).hexdigest()
    )
    assert verify(filesystem_for(result.checkpoint), result.checkpoint.fs_path).ok
    loaded = load_model(str(result.checkpoint), name="d-static")
    fp32 = load_model(str(source), name="digits")
    quantized = {
        type(m).__name__ for m in loaded.module.modules() if ".quantized" in type(m).__module__
    }
    assert {"ConvReLU2d", "Linear"} <= quantized, quantized  # conv+relu fused by FX
    features = np.array(val.features)
    agree = (loaded.predict(features).argmax(1) == fp32.predict(features).argmax(1)).mean()
    assert agree >= 0.97, agree
    assert lineage.evaluation is not None and abs(lineage.evaluation.delta) <= 0.02
    # A 10k-parameter model: torch.save's per-tensor archive entries and the fp32 biases and
    # scales weigh as much as the int8 weights (the default-size model reaches 0.27x, README).
    assert lineage.size_ratio < 0.6, lineage.size_ratio


# ------------------------------------------- every recipe: stored, loaded, same model


RECIPE_CONFIGS = {
    "digits-cnn": ({"channels": 8, "hidden": 16}, [1, 8, 8], "float32"),
    "image-cnn": ({"width": 8, "stages": 2, "in_channels": 3, "num_classes": 4,
                   "mean": [0.5] * 3, "std": [0.25] * 3}, [3, 12, 12], "float32"),
    "text-lstm": ({"embed": 8, "hidden": 8, "vocab_size": 20, "num_classes": 3}, [16], "int64"),
    "tabular-mlp": ({"hidden": 8, "features": 5, "num_classes": 2, "mean": [1.0] * 5,
                     "std": [2.0] * 5}, [5], "float32"),
}  # fmt: skip
CASES = [
    (recipe, method)
    for recipe in RECIPE_CONFIGS
    for method in METHODS
    if (recipe, method) != ("text-lstm", "static-int8")  # refused (test above)
    and method != "distill"  # trains a new model: test_compress_distill
]


@pytest.mark.parametrize(("recipe", "method"), CASES)
def test_serving_rebuilds_each_recipes_compressed_model_exactly(tmp_path, recipe, method):
    """The weights stored for every recipe and method pass torch.load(weights_only=True) (the
    int8 LSTM's TorchScript cells are stored as plain int8 tensors) and the model serving
    rebuilds computes what the compressed model computed."""
    from rayfleet.compress import transform
    from rayfleet.serve.loading import load_verified
    from rayfleet.train.recipes import RECIPES

    config, shape, dtype = RECIPE_CONFIGS[recipe]
    module, _, attr = RECIPES[recipe].model_builder.partition(":")
    build = getattr(__import__(module, fromlist=[attr]), attr)
    torch.manual_seed(0)
    fp32 = build(config).eval()
    chosen = METHODS[method]
    check_layers(chosen, transform.layer_types(fp32), recipe)
    x = torch.randint(0, 20, (8, *shape)) if dtype == "int64" else torch.randn(8, *shape)
    engine = transform.default_engine()
    with torch.inference_mode():
        expected_fp32 = fp32(x)
    example = torch.zeros((1, *shape), dtype=getattr(torch, dtype))
    compressed = transform.compress_module(
        _copy(fp32, build, config),
        chosen,
        engine=engine,
        example=example,
        calibration=[x],
    )
    with transform.quiet():
        torch.save({"model": transform.weights_of(compressed, chosen)}, tmp_path / "state.pt")
    lineage = _lineage(method=method, engine=None if method == "fp16" else engine)
    meta = {"recipe": recipe, "model_config": config, "num_classes": 4,
            "input": {"shape": shape, "dtype": dtype}, META_KEY: lineage.to_meta()}  # fmt: skip
    loaded = load_verified(tmp_path, write_manifest(tmp_path, meta), "ck", name="m")
    with torch.inference_mode():
        got = loaded.module(x)
        if method == "fp16":  # loaded in fp32 from half weights: rounding only
            torch.testing.assert_close(got, expected_fp32, atol=5e-3, rtol=5e-3)
        else:
            assert torch.equal(got, compressed(x))


def _copy(model, build, config):
    """A second instance with the same weights (dynamic quantization swaps layers in place)."""
    twin = build(config).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def test_the_lineage_attaches_to_the_source_runs_mlflow_run(tmp_path, monkeypatch):
    """A tracked source run (its record names an MLflow file store): the compression's
    lineage, size ratio and accuracy change land on that run's MLflow run (issue 19)."""
    import mlflow

    from rayfleet import record
    from rayfleet.data.digits import import_digits
    from rayfleet.specs import load_spec

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    tracking_uri = f"file://{tmp_path / 'mlruns'}"
    storage = parse_uri(str(tmp_path / "store"))
    import_digits(storage.join("datasets", "digits"))
    write_checkpoint(tmp_path / "store" / "runs" / "digits" / "checkpoint_e000001-aa", 1)
    job = load_spec(
        Path(__file__).resolve().parents[2] / "jobs" / "digits" / "train.yaml",
        [f"spec.storage={storage}", f"spec.tracking.mlflow.uri={tracking_uri}",
         "spec.tracking.mlflow.experiment=compress-test"],
    )  # fmt: skip
    run_uri = storage.join("runs", "digits")
    record.write(filesystem_for(run_uri), run_uri, job, status="SUCCEEDED")
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.create_experiment("compress-test")
    tracked = client.create_run(experiment, tags={"rayfleet.run_uri": str(run_uri)})

    result = compress_run("digits", storage=storage, method="fp16", to="digits-fp16")
    assert result.mlflow_attached
    run = client.get_run(tracked.info.run_id)
    assert run.data.metrics["compress_fp16_size_ratio"] == pytest.approx(
        result.compression.size_ratio
    )
    assert "compress_fp16_accuracy_delta" in run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(tracked.info.run_id)]
    assert "compression-digits-fp16.json" in artifacts
