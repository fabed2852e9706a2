"""Which recipe takes which dataset: `check_dataset` (pure) and the launcher's preflight.

A table given to an image recipe must fail before Ray starts, with exit 2 and one line that
names the recipe, the dataset's kind, what the recipe accepts and how to fix it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayfleet.data.layout import DatasetInfo
from rayfleet.errors import SpecError
from rayfleet.train.recipes import RECIPES, check_dataset

pytestmark = pytest.mark.unit
JOBS = Path(__file__).resolve().parents[2] / "jobs"


def _info(kind: str, shape: list[int], **fields) -> DatasetInfo:
    extra = {"vocab": ["<pad>", "<unk>", "a"], "tokenizer": "lower-words-v1"}
    return DatasetInfo(
        name="d",
        kind=kind,
        feature_shape=shape,
        feature_dtype="int64" if kind == "text" else "float32",
        num_classes=2,
        rows={"train": 4, "val": 2},
        **(extra if kind == "text" else {}),
        **fields,
    )


@pytest.mark.parametrize(
    ("recipe", "kind", "shape"),
    [
        ("image-cnn", "image", [3, 32, 32]),
        ("image-cnn", "image", [1, 8, 8]),
        ("digits-cnn", "image", [1, 8, 8]),
        ("text-lstm", "text", [16]),
        ("tabular-mlp", "table", [30]),
        ("synthetic-mlp", "table", [30]),  # reads no dataset
        ("", "table", [30]),  # a user entrypoint decides itself
    ],
)
def test_recipes_accept_their_dataset_kinds(recipe, kind, shape):
    check_dataset(recipe, _info(kind, shape))


@pytest.mark.parametrize(
    ("recipe", "kind", "shape", "says"),
    [
        ("image-cnn", "table", [30], "use model.recipe tabular-mlp"),
        ("tabular-mlp", "image", [3, 32, 32], "use model.recipe digits-cnn or image-cnn"),
        ("text-lstm", "table", [30], "use model.recipe tabular-mlp"),
        ("digits-cnn", "image", [3, 32, 32], "use model.recipe image-cnn"),
    ],
)
def test_a_mismatch_is_one_line_naming_recipe_kind_and_fix(recipe, kind, shape, says):
    with pytest.raises(SpecError) as caught:
        check_dataset(recipe, _info(kind, shape))
    message = str(caught.value)
    assert "\n" not in message and f"recipe {recipe}" in message and says in message
    assert f"{kind} dataset" in message


def test_every_dataset_recipe_declares_kinds_keys_and_metrics():
    for name, recipe in RECIPES.items():
        assert recipe.config_keys and recipe.metrics, name
        assert bool(recipe.dataset_kinds) == recipe.needs_dataset, name


def test_example_specs_name_their_recipes_and_how_to_import():
    from rayfleet.specs import load_spec

    for folder, recipe in (
        ("images", "image-cnn"),
        ("text", "text-lstm"),
        ("tables", "tabular-mlp"),
    ):
        path = JOBS / folder / "train.yaml"
        spec = load_spec(path).spec
        assert spec.model.recipe == recipe and spec.dataset
        assert set(spec.model.config) <= set(RECIPES[recipe].config_keys)
        assert "rayfleet data import" in path.read_text()


def test_run_with_a_table_for_image_cnn_exits_2_in_one_line(tmp_path):
    """The CLI as a user runs it: import a CSV, give it to image-cnn; preflight refuses before
    Ray starts (no Ray in this test)."""
    from rayfleet.cli.main import app

    table = tmp_path / "patients.csv"
    table.write_text("age,dose,ill\n" + "".join(f"{30 + i},{i % 3},{i % 2}\n" for i in range(20)))
    imported = CliRunner().invoke(
        app,
        ["data", "import", str(table), str(tmp_path / "datasets" / "patients"), "--label", "ill"],
    )
    assert imported.exit_code == 0, imported.output
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(JOBS / "images" / "train.yaml"),
            "--set",
            f"spec.storage={tmp_path}",
            "--set",
            "spec.dataset=patients",
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "recipe image-cnn" in lines[0] and "table dataset" in lines[0]
    assert "tabular-mlp" in lines[0]
    assert not list(tmp_path.glob("runs/*/checkpoint_*")), "nothing was trained"


def _model_config(recipe: str) -> dict:
    """A model_config as the training loops record it in the manifest (user + dataset keys)."""
    return {
        "image-cnn": {"width": 8, "stages": 2, "in_channels": 3, "num_classes": 4,
                      "mean": [0.5] * 3, "std": [0.25] * 3},
        "text-lstm": {"embed": 8, "hidden": 8, "vocab_size": 20, "num_classes": 3},
        "tabular-mlp": {"hidden": 8, "features": 5, "num_classes": 2,
                        "mean": [1.0] * 5, "std": [2.0] * 5},
    }[recipe]  # fmt: skip


@pytest.mark.parametrize(
    ("recipe", "shape", "dtype"),
    [
        ("image-cnn", (3, 32, 32), "float32"),
        ("image-cnn", (3, 12, 20), "float32"),  # global pooling: any H x W
        ("text-lstm", (16,), "int64"),
        ("tabular-mlp", (5,), "float32"),
    ],
)
def test_serving_rebuilds_each_recipe_from_its_manifest_config(recipe, shape, dtype):
    """What serving does (loading.py): builder(meta model_config), load the weights, call it
    on a raw batch; normalization travels inside the weights."""
    import torch

    from rayfleet.serve.loading import _builder

    config = _model_config(recipe)
    trained = _builder(recipe)(config)
    served = _builder(recipe)(config)
    served.load_state_dict(trained.state_dict())
    served.eval()
    trained.eval()
    x = torch.ones(2, *shape, dtype=getattr(torch, dtype))
    with torch.no_grad():
        assert served(x).shape == (2, config["num_classes"])
        assert torch.equal(served(x), trained(x))


def test_text_lstm_ignores_padding():
    """Packed sequences: a text scores the same alone or padded next to a longer one."""
    import torch

    from rayfleet.train.recipes.text_lstm import build_model

    torch.manual_seed(0)
    model = build_model(_model_config("text-lstm")).eval()
    short = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0]])
    batch = torch.tensor([[5, 6, 7, 0, 0, 0, 0, 0], [3, 4, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(model(short)[0], model(batch)[0], atol=1e-6)
        assert torch.allclose(model(short)[0], model(short[:, :3])[0], atol=1e-6)


def test_image_augmentation_is_seeded_and_keeps_shape():
    import torch

    from rayfleet.train.recipes.image_cnn import augmenter

    x = torch.rand(6, 3, 8, 8)
    a = augmenter(pad=2, flip=True)(x, torch.Generator().manual_seed(1))
    b = augmenter(pad=2, flip=True)(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(augmenter(pad=0, flip=False)(x, torch.Generator()), x)
