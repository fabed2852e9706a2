"""The built-in recipes end to end on local Ray (2 CPUs) and local storage: each trains to a
stated quality on data that ships with scikit-learn or that the test generates (nothing is
downloaded), writes verified checkpoints that record what serving needs, and resumes exactly.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from rayfleet.specs import load_spec
from rayfleet.storage.checkpoints import verify
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.storage.uri import parse_uri
from rayfleet.train.launcher import run_train_job

from ..conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes-store")


def _job(store, folder: str, name: str, dataset: str, *overrides):
    return load_spec(
        REPO / "jobs" / folder / "train.yaml",
        [f"metadata.name={name}", f"spec.storage={store}", f"spec.dataset={dataset}", *overrides],
    )


def _meta(result) -> dict:
    """The manifest meta of the run's final checkpoint, after verifying it."""
    print(f"{result.name}: {result.metrics}")  # the figures the README quotes (pytest -s)
    uri = parse_uri(result.checkpoint_uri)
    result = verify(filesystem_for(uri), uri.fs_path)
    assert result.ok, result.reason
    return result.manifest["meta"]


def _epochs(events: list) -> dict[int, dict]:
    return {e["epoch"]: e["metrics"] for e in events if e["type"] == "epoch"}


# ----------------------------------------------------------------------------- datasets
# Source data as a user has it (PNG folders, CSV files), imported with `rayfleet data import`'s
# function, so the recipes train on exactly what the importer writes.


def _import(store, source, name: str, **options) -> str:
    from rayfleet.data.imports import ImportOptions, import_source

    dest = parse_uri(str(store / "datasets" / name))
    import_source(str(source), dest, ImportOptions(name=name, **options))
    return name


def _png_folder(root, images: np.ndarray, labels: np.ndarray, names: list[str]):
    """images (N, H, W) grey or (N, H, W, 3) RGB in [0, 1] -> root/<class>/<i>.png."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def digits_images(store, tmp_path_factory):
    """scikit-learn's 8x8 digits written as a folder of grey PNGs, one sub-folder per digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = _png_folder(
        tmp_path_factory.mktemp("digit-pngs"),
        np.clip(digits.images / 16.0, 0, 1),
        digits.target,
        [f"digit-{d}" for d in range(10)],
    )
    return _import(store, folder, "digit-images")


@pytest.fixture(scope="module")
def shapes_rgb(store, tmp_path_factory):
    """32x32 RGB PNGs of 4 classes: a bright bar that is horizontal, vertical, diagonal or a
    small square, in a random colour at a random place, on noise."""
    rng = np.random.default_rng(0)
    n, size = 480, 32
    y = np.arange(n) % 4
    x = rng.uniform(0, 0.5, size=(n, size, size, 3))
    for i, label in enumerate(y):
        colour = rng.uniform(0.5, 1.0, size=3)
        a, b = rng.integers(4, size - 12, size=2)
        if label == 0:
            rows, cols = np.full(12, a), np.arange(b, b + 12)
        elif label == 1:
            rows, cols = np.arange(a, a + 12), np.full(12, b)
        elif label == 2:
            rows, cols = np.arange(a, a + 12), np.arange(b, b + 12)
        else:
            rows, cols = np.repeat(np.arange(a, a + 4), 4), np.tile(np.arange(b, b + 4), 4)
        x[i, rows, cols] = colour
    names = ["a-horizontal", "b-vertical", "c-diagonal", "d-square"]
    folder = _png_folder(tmp_path_factory.mktemp("shape-pngs"), x, y, names)
    return _import(store, folder, "shapes")


@pytest.fixture(scope="module")
def keyword_texts(store, tmp_path_factory):
    """A CSV of sentences of 4-14 random filler words plus one keyword; the keyword decides
    the class (3 classes, 2 keywords each)."""
    rng = np.random.default_rng(0)
    keywords = {"fruit": ["apple", "pear"], "car": ["engine", "wheel"], "music": ["violin", "drum"]}
    filler = [f"word{i}" for i in range(60)]
    rows = []
    for i in range(900):
        label = list(keywords)[i % 3]
        words = list(rng.choice(filler, size=rng.integers(4, 15)))
        words.insert(int(rng.integers(0, len(words) + 1)), keywords[label][i % 2])
        rows.append({"text": " ".join(words).capitalize() + ".", "label": label})
    path = tmp_path_factory.mktemp("texts") / "sentences.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return _import(store, path, "keywords", label="label", text="text", max_length=16)


@pytest.fixture(scope="module")
def breast_cancer(store, tmp_path_factory):
    """scikit-learn's bundled breast-cancer table (569 rows, 30 features) as a CSV."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    path = tmp_path_factory.mktemp("tables") / "breast-cancer.csv"
    table = np.column_stack([data.data, data.target])
    header = ",".join([*data.feature_names, "target"])
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.10g")
    return _import(store, path, "breast-cancer", label="target")


# -------------------------------------------------------------------------------- tests


def test_image_cnn_reaches_95_on_digit_images(ray_local, store, digits_images):
    job = _job(
        store, "images", "img-digits", digits_images,
        "spec.model.config.flip=false", "spec.model.config.pad=0",
        "spec.model.config.width=16", "spec.model.config.stages=2",
        "spec.run.epochs=5", "spec.run.batchSize=32", "spec.run.learningRate=0.003",
    )  # fmt: skip
    result = run_train_job(job)
    assert result.metrics["val_accuracy"] >= 0.95, result.metrics
    meta = _meta(result)
    assert meta["recipe"] == "image-cnn" and meta["num_classes"] == 10
    assert meta["input"] == {"shape": [1, 8, 8], "dtype": "float32"}
    assert meta["model_config"]["in_channels"] == 1 and len(meta["normalization"]["mean"]) == 1


@pytest.mark.slow
def test_image_cnn_learns_32x32_rgb_shapes(ray_local, store, shapes_rgb):
    events: list = []
    job = _job(
        store, "images", "img-shapes", shapes_rgb,
        "spec.model.config.width=16", "spec.model.config.stages=2",
        "spec.run.epochs=4", "spec.run.batchSize=32", "spec.run.learningRate=0.005",
    )  # fmt: skip
    result = run_train_job(job, on_event=events.append)
    epochs = _epochs(events)
    assert epochs[3]["train_loss"] < epochs[0]["train_loss"], epochs
    assert result.metrics["val_accuracy"] >= 0.6, result.metrics  # chance: 0.25
    meta = _meta(result)
    assert meta["input"]["shape"] == [3, 32, 32] and meta["class_names"][3] == "d-square"


@pytest.mark.slow  # ~45 s; the default run keeps its unit tests (packing, serving rebuild)
def test_text_lstm_reaches_90_on_keyword_sentences(ray_local, store, keyword_texts):
    job = _job(store, "text", "text-keywords", keyword_texts, "spec.run.epochs=4")
    result = run_train_job(job)
    assert result.metrics["val_accuracy"] >= 0.9, result.metrics
    meta = _meta(result)
    assert meta["input"] == {"shape": [16], "dtype": "int64"} and meta["max_length"] == 16
    assert meta["vocab_size"] == meta["model_config"]["vocab_size"] > 60


@pytest.fixture(scope="module")
def tabular_reference(ray_local, store, breast_cancer):
    """The uninterrupted 8-epoch tabular-mlp run: the quality check and the resume reference."""
    return run_train_job(_job(store, "tables", "tab-cancer", breast_cancer, "spec.run.epochs=8"))


def test_tabular_mlp_reaches_93_on_breast_cancer(tabular_reference):
    assert tabular_reference.metrics["val_accuracy"] >= 0.93, tabular_reference.metrics
    meta = _meta(tabular_reference)
    assert meta["input"] == {"shape": [30], "dtype": "float32"}
    assert meta["feature_names"][0] == "mean radius" and len(meta["class_names"]) == 2


@pytest.mark.slow
def test_tabular_mlp_resumes_exactly(store, breast_cancer, tabular_reference):
    """Run 4 epochs, rerun the same spec with 8: it continues at epoch 5 and ends with the
    metrics of the uninterrupted 8-epoch run of the same seed under another name."""
    run_train_job(_job(store, "tables", "tab-resume", breast_cancer, "spec.run.epochs=4"))
    events: list = []
    longer = _job(store, "tables", "tab-resume", breast_cancer, "spec.run.epochs=8")
    resumed = run_train_job(longer, on_event=events.append)
    assert sorted(_epochs(events)) == [4, 5, 6, 7], "the rerun trained epochs 5-8 only"
    assert resumed.metrics == tabular_reference.metrics
