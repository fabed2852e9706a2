"""digits-gan's parts without Ray: the networks, one training step, the sample score, the
config check, the checkpoint contents and the recipe's registry entry.

The end-to-end run (2 DDP workers, S3, resume after a killed worker) is
tests/integration/test_digits_gan.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayfleet.data.layout import DatasetInfo
from rayfleet.errors import BadInputError, SpecError
from rayfleet.train.recipes import RECIPES, STATE_FILE, check_dataset
from rayfleet.train.recipes import digits_gan as gan

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits as the importer stores them: [N, 1, 8, 8] in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    return x, torch.tensor(data.target)


class Centroids(nn.Module):
    """A fixed, untrained digits classifier: logits are minus the squared distance to each
    digit's mean image. Tiny and deterministic, so the score is tested, not a training run."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__()
        means = torch.stack([x[y == c].mean(0).flatten() for c in range(10)])
        self.register_buffer("means", means)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(torch.cdist(x.flatten(1), self.means) ** 2)


class Always(nn.Module):
    """Says `digit`, certain, whatever the image."""

    def __init__(self, digit: int):
        super().__init__()
        self.digit = digit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 10), -30.0)
        logits[:, self.digit] = 30.0
        return logits


# ------------------------------------------------------------------------------ networks


def test_generator_and_discriminator_shapes():
    torch.manual_seed(0)
    g = gan.build_model({"latent": 16, "width": 8})
    d = gan.build_discriminator({"width": 8})
    z, labels = torch.randn(5, 16), torch.tensor([0, 1, 2, 3, 9])
    images = g(z, labels)
    assert isinstance(g, gan.Generator) and images.shape == (5, 1, 8, 8)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images, labels).shape == (5,)
    # Latents only (a plain inference request): digits 0..9 in turn.
    g.eval()
    assert torch.equal(g(z), g(z, torch.arange(5)))


def test_one_gan_step_is_a_function_of_the_seed(digits):
    x, y = digits

    def step(seed: int):
        torch.manual_seed(seed)
        g, d = gan.build_model({}), gan.build_discriminator({})
        g_opt = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.5, 0.999))
        d_opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999))
        rng = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(y), generator=rng)[:16]
        z = torch.randn(16, 32, generator=rng)
        losses = gan.gan_step(g, d, g_opt, d_opt, x[idx] * 2 - 1, y[idx], z)
        return losses, g.state_dict(), d.state_dict()

    (losses, g1, d1), (again, g2, d2) = step(7), step(7)
    assert losses == again and all(v > 0 for v in losses)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    assert all(torch.equal(d1[k], d2[k]) for k in d1)
    other, g3, _ = step(8)
    assert other != losses and not torch.equal(g1["out.weight"], g3["out.weight"])


# ------------------------------------------------------------------------------ score


def test_noise_scores_far_below_real_digits(digits):
    x, y = digits
    classifier = Centroids(x, y)
    real = gan.score(classifier, x, y)
    labels = gan.sample_labels(50)
    noise = gan.score(classifier, gan.noise_images(len(labels), seed=1), labels)
    assert real["label_match"] > 0.85 and real["coverage"] == 1.0
    assert real["quality"] > noise["quality"] + 0.5, (real, noise)
    assert noise["label_match"] < 0.2 and noise["coverage"] == 0.0


def test_score_definitions_on_a_classifier_that_always_says_three():
    labels = gan.sample_labels(10)
    result = gan.score(Always(3), torch.zeros(100, 1, 8, 8), labels)
    assert result["coverage"] == pytest.approx(0.1)  # only 3 is recognized as itself
    assert result["label_match"] == pytest.approx(0.1)  # right only for the row of 3s
    assert result["quality"] == pytest.approx(0.1, abs=1e-6)


def test_in_run_scorer_is_deterministic_and_accurate(digits):
    x, y = digits
    a = gan.train_scorer(x[:1200], y[:1200], seed=3, epochs=3)
    b = gan.train_scorer(x[:1200], y[:1200], seed=3, epochs=3)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert gan.accuracy(a, x[1200:], y[1200:]) > 0.85


# ------------------------------------------------------------------------------ config


def test_config_defaults_and_keys_match_the_registry():
    assert gan.gan_config({}) == gan.GanConfig()
    assert set(RECIPES["digits-gan"].config_keys) == set(gan.CONFIG_KEYS)
    cfg = gan.gan_config({"latent": 8, "beta1": 0, "scorer": "s3://b/runs/d/checkpoint_e1"})
    assert cfg.latent == 8 and cfg.beta1 == 0 and cfg.scorer.startswith("s3://")


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"latnet": 64}, "model.config.latnet is not a key it reads; use one of latent"),
        ({"latent": 0}, "model.config.latent: 0 must be a whole number from 1 to 1024"),
        ({"latent": True}, "model.config.latent: True must be a whole number"),
        ({"width": 2.5}, "model.config.width: 2.5 must be a whole number from 4 to 512"),
        ({"beta1": 1.0}, "model.config.beta1: 1.0 must be in [0, 1)"),
        ({"beta1": "high"}, "model.config.beta1: 'high' must be a number"),
        ({"samplesPerClass": 5}, "samplesPerClass: 5 must be a whole number from 10"),
        ({"scorer": ""}, "model.config.scorer: '' must be the URI of a verified digits"),
    ],
)
def test_a_bad_config_is_one_spec_error_naming_the_key(config, says):
    with pytest.raises(SpecError) as caught:
        gan.gan_config(config)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("recipe digits-gan: ") and says in message
    assert caught.value.exit_code == 2


def test_registry_entry_reports_gan_metrics_and_takes_only_8x8_digits():
    recipe = RECIPES["digits-gan"]
    assert recipe.metrics[0] == "quality"  # what a sweep of it maximizes
    assert {"g_loss", "d_loss", "noise_quality"} <= set(recipe.metrics)
    assert not any(m.startswith("val_") for m in recipe.metrics)
    assert recipe.model_builder == "rayfleet.train.recipes.digits_gan:build_model"
    rows = {"train": 4, "val": 2}
    info = {"name": "d", "feature_dtype": "float32", "num_classes": 10, "rows": rows}
    check_dataset("digits-gan", DatasetInfo(kind="image", feature_shape=[1, 8, 8], **info))
    with pytest.raises(SpecError, match="built for feature shape \\[1, 8, 8\\] only"):
        check_dataset("digits-gan", DatasetInfo(kind="image", feature_shape=[3, 32, 32], **info))


def test_the_shipped_spec_validates_and_uses_only_known_keys():
    from rayfleet.specs import load_spec

    from ..conftest import REPO

    spec = load_spec(REPO / "jobs" / "digits-gan" / "train.yaml").spec
    assert spec.model.recipe == "digits-gan" and spec.dataset == "digits"
    gan.gan_config(spec.model.config)  # no SpecError


# ------------------------------------------------------------------------------ checkpoint


def test_checkpoint_holds_both_optimizers_scorer_and_a_hashed_grid(tmp_path, digits):
    from PIL import Image

    from rayfleet.storage.checkpoints import write_manifest

    x, y = digits
    torch.manual_seed(0)
    g, d = gan.build_model({}), gan.build_discriminator({})
    nets = gan.Networks(
        g, d, torch.optim.Adam(g.parameters(), 1e-3), torch.optim.Adam(d.parameters(), 1e-3)
    )
    gan.gan_step(g, d, nets.g_optimizer, nets.d_optimizer, x[:8] * 2 - 1, y[:8], torch.randn(8, 32))
    scorer = gan.train_scorer(x[:200], y[:200], seed=0, epochs=1)
    labels = gan.sample_labels(10)
    with torch.no_grad():
        images = gan.to_unit(g.eval()(torch.randn(100, 32), labels))
    gan.write_checkpoint(
        tmp_path, nets, epoch=4, scorer=(scorer, {"source": "test"}), samples=(images, 10)
    )
    manifest = write_manifest(tmp_path, {"recipe": "digits-gan"})  # what session.report does
    assert {f["path"] for f in manifest["files"]} == {STATE_FILE, gan.SAMPLES_PNG}

    state = torch.load(tmp_path / STATE_FILE, weights_only=True)
    assert state["epoch"] == 4 and state["optimizer"]["state"] and state["d_optimizer"]["state"]
    torch.manual_seed(1)
    fresh = gan.Networks(
        gan.build_model({}),
        gan.build_discriminator({}),
        torch.optim.Adam(gan.build_model({}).parameters(), 1e-3),
        torch.optim.Adam(gan.build_discriminator({}).parameters(), 1e-3),
    )
    fresh.load(state)
    assert torch.equal(fresh.generator.out.weight, g.out.weight)
    assert torch.equal(fresh.discriminator.head.weight, d.head.weight)
    assert state["scorer"]["about"] == {"source": "test"}

    with Image.open(tmp_path / gan.SAMPLES_PNG) as png:
        assert png.format == "PNG" and png.width >= 300 and png.height >= 300


def test_scorer_checkpoint_is_loaded_verified_and_must_be_a_digits_classifier(tmp_path, digits):
    from rayfleet.storage.checkpoints import write_manifest
    from rayfleet.train.recipes.digits import build_model as build_cnn

    x, y = digits
    cnn = gan.train_scorer(x[:300], y[:300], seed=0, epochs=1)
    good = tmp_path / "cnn"
    good.mkdir()
    torch.save({"model": cnn.state_dict()}, good / STATE_FILE)
    meta = {
        "recipe": "digits-cnn",
        "model_config": gan.SCORER_CONFIG,
        "input": {"shape": [1, 8, 8], "dtype": "float32"},
        "num_classes": 10,
    }
    write_manifest(good, meta)
    loaded, about = gan.load_scorer(str(good))
    assert about["recipe"] == "digits-cnn"
    assert torch.equal(loaded(x[:5]), cnn(x[:5]))
    assert isinstance(build_cnn(gan.SCORER_CONFIG), type(loaded))

    generator = tmp_path / "gan"
    generator.mkdir()
    torch.save({"model": gan.build_model({}).state_dict()}, generator / STATE_FILE)
    write_manifest(
        generator,
        {
            "recipe": "digits-gan",
            "model_config": {"latent": 32},
            "input": {"shape": [32], "dtype": "float32"},
            "num_classes": 10,
        },
    )
    with pytest.raises(SpecError, match="name a digits classifier"):
        gan.load_scorer(str(generator))

    (good / STATE_FILE).write_bytes(b"tampered")  # the manifest no longer verifies
    with pytest.raises(BadInputError, match="refusing to serve it|cannot be loaded"):
        gan.load_scorer(str(good))


def test_the_launcher_checks_the_recipe_config_before_ray_starts():
    from rayfleet.train.recipes import check_config

    with pytest.raises(SpecError, match="model.config.latnet is not a key it reads"):
        check_config("digits-gan", {"latnet": 64})
    check_config("digits-gan", {"latent": 16})
    check_config("digits-cnn", {"anything": 1})  # no config_check: nothing to say
