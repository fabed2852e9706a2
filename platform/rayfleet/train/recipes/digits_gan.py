"""digits-gan: a conditional DCGAN on the 8x8 handwritten digits, data-parallel with DDP.

The generator maps a latent vector z (`latent` dims) and a class label to an 8x8 image; the
discriminator judges (image, label) pairs. Conditional, so a trained digits classifier can
say whether each sample shows the digit it was asked for: that makes "quality" and "class
coverage" measurable rather than a matter of looking at pictures.

Why a classifier score: GAN losses do not say whether samples look like digits (they chase
each other). Every epoch rank 0 draws a fixed set of samples (`samplesPerClass` per digit,
the same latents every epoch) and a digits classifier scores them:

- `quality`: the classifier's mean probability of the intended digit (the sweep metric, max);
- `label_match`: the fraction of samples classified as the digit they were conditioned on;
- `coverage`: the fraction of the 10 digits the generator can draw: those for which the
  classifier recognizes the digit in more than half of the samples asked for it (a generator
  that collapsed onto a few digits covers few; noise covers none, although its argmaxes
  scatter over every digit, which is why "classes the argmax hits" is not the measure);
- `noise_quality`: the same `quality` of uniform random noise images with the same labels,
  the floor a generator must clear (also in the checkpoint meta as `noise_score`).

The classifier ("scorer") is either a verified digits classifier checkpoint named by
`scorer` (a URI; loaded like serving does: manifest verified, `torch.load(weights_only=True)`,
the recipe's own `build_model`), or, by default, a small digits-cnn that rank 0 trains on the
whole train split before the GAN starts (a few seconds on CPU, seeded from the run's seed).
A trained-in-run scorer is stored in every checkpoint, so a resumed run scores with the very
same weights instead of retraining them.

Like the classifier recipes: model init from the run's seed; each epoch's shuffle and
latents from (seed, epoch, rank); both networks and both Adam optimizers checkpointed at
epoch ends with a manifest; resume from the newest verified checkpoint, so a killed-and-
resumed run ends with exactly the metrics of an uninterrupted one. Each checkpoint also holds
`samples.png` (10x10 grid, one row per digit), written before the manifest so it is hashed.

`build_model` returns the generator: the checkpoint's `model` state is the generator's, and
the manifest's `signature` (`serving_signature`) says what `rayfleet serve` takes and gives:
latents and optional labels in, images in the data's [0, 1] scale out.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayfleet.data.layout import read_info
from rayfleet.data.shards import read_shard
from rayfleet.errors import SpecError
from rayfleet.plots import _pyplot
from rayfleet.serve.loading import load_model
from rayfleet.storage.filesystem import filesystem_for
from rayfleet.train import session
from rayfleet.train.recipes import STATE_FILE
from rayfleet.train.recipes.common import (
    all_reduce_sum,
    broadcast_buffers,
    save_state,
    seed_epoch,
    unwrap,
)
from rayfleet.train.recipes.digits import build_model as build_cnn

RECIPE = "digits-gan"
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
SAMPLES_PNG = "samples.png"
# The in-run scorer: a digits-cnn, smaller than the quickstart's (it only has to be right).
SCORER_CONFIG = {"channels": 16, "hidden": 64, "dropout": 0.1}
_SCORER_SEED_OFFSET = 7919  # its seed differs from the GAN's, so the two don't share draws
_SAMPLE_SEED_OFFSET = 104_729  # the fixed latents of the per-epoch samples
_NOISE_SEED_OFFSET = 1_299_709  # the noise images of the floor score


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class GanConfig:
    """The recipe's `model.config`, checked: what each key means is in jobs/digits-gan."""

    latent: int = 32
    width: int = 32
    beta1: float = 0.5
    scorer: str | None = None
    scorer_epochs: int = 10
    samples_per_class: int = 100


_KEYS = {
    "latent": "latent",
    "width": "width",
    "beta1": "beta1",
    "scorer": "scorer",
    "scorerEpochs": "scorer_epochs",
    "samplesPerClass": "samples_per_class",
}
CONFIG_KEYS = tuple(_KEYS)
_INT_RANGES = {
    "latent": (1, 1024),
    "width": (4, 512),
    "scorerEpochs": (1, 200),
    "samplesPerClass": (10, 1000),
}


def gan_config(config: dict[str, Any]) -> GanConfig:
    """The checked config, or SpecError (one line: the key, the bad value, the fix).

    Keys the recipe does not read are refused rather than ignored: a typo (`latnet: 64`)
    would otherwise train the default silently. The loop adds `num_classes` itself.
    """
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key == "num_classes":
            continue
        where = f"recipe {RECIPE}: model.config.{key}"
        if key not in _KEYS:
            raise SpecError(f"{where} is not a key it reads; use one of {', '.join(CONFIG_KEYS)}")
        if key in _INT_RANGES:
            lo, hi = _INT_RANGES[key]
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise SpecError(f"{where}: {value!r} must be a whole number from {lo} to {hi}")
        elif key == "beta1":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SpecError(f"{where}: {value!r} must be a number in [0, 1), e.g. 0.5")
            if not 0.0 <= value < 1.0:
                raise SpecError(f"{where}: {value!r} must be in [0, 1), e.g. 0.5")
        elif key == "scorer" and value is not None:
            if not isinstance(value, str) or not value.strip():
                raise SpecError(
                    f"{where}: {value!r} must be the URI of a verified digits classifier "
                    "checkpoint (e.g. s3://bucket/runs/digits/checkpoint_e000011-...), or "
                    "leave it out to train one in the run"
                )
        values[_KEYS[key]] = value
    return GanConfig(**values)


# ------------------------------------------------------------------------------ models


class Generator(nn.Module):
    """(z, label) -> an 8x8 image in [-1, 1]: linear to 4x4, a transposed conv to 8x8."""

    def __init__(self, latent: int = 32, width: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.latent, self.width, self.num_classes = latent, width, num_classes
        self.project = nn.Linear(latent + num_classes, width * 2 * 4 * 4)
        self.norm0 = nn.BatchNorm2d(width * 2)
        self.up = nn.ConvTranspose2d(width * 2, width, 4, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(width)
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images for latents `z` [N, latent]; without `labels`, digits 0..9 in turn (a
        caller that sends only latents, as a plain inference request would, gets all ten)."""
        if labels is None:
            labels = torch.arange(z.shape[0], device=z.device) % self.num_classes
        onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
        x = self.project(torch.cat([z, onehot], 1)).view(-1, self.width * 2, 4, 4)
        x = F.relu(self.norm1(self.up(F.relu(self.norm0(x)))))
        return torch.tanh(self.out(x))


class Discriminator(nn.Module):
    """(image in [-1, 1], label) -> a real/fake logit; the label enters as one-hot planes.

    No BatchNorm: real and generated images go through in one batch, and batch statistics
    would let it tell them apart by the mix rather than by the images."""

    def __init__(self, width: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1 + num_classes, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width * 2, 4, stride=2, padding=1)
        self.head = nn.Linear(width * 2 * 4 * 4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        planes = F.one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
        x = torch.cat([x, planes.expand(-1, -1, x.shape[2], x.shape[3])], 1)
        x = F.leaky_relu(self.conv1(x), 0.2)
        x = F.leaky_relu(self.conv2(x), 0.2)
        return self.head(torch.flatten(x, 1)).squeeze(1)


def build_model(config: dict) -> Generator:
    """The generator (what serving would load) from a checkpoint's model_config."""
    return Generator(
        latent=int(config.get("latent", 32)),
        width=int(config.get("width", 32)),
        num_classes=int(config.get("num_classes", NUM_CLASSES)),
    )


def build_discriminator(config: dict) -> Discriminator:
    return Discriminator(
        width=int(config.get("width", 32)),
        num_classes=int(config.get("num_classes", NUM_CLASSES)),
    )


def serving_signature(latent: int) -> dict[str, Any]:
    """What serving takes and gives (the manifest's `signature`, see serve.loading): `latent`
    [N, latent] FP32 and an optional `label` [N] (INT64 or INT32, 0..9; absent: row i gets
    digit i % 10, as `Generator.forward` does) -> `image` [N, 1, 8, 8] FP32 in the data's
    [0, 1] pixel scale (the generator's tanh [-1, 1] mapped as `to_unit` does)."""
    return {
        "inputs": [
            {"name": "latent", "shape": [latent], "dtype": "float32"},
            {
                "name": "label",
                "shape": [],
                "dtype": "int64",
                "also": ["int32"],
                "optional": True,
                "default": "cycle",
                "range": [0, NUM_CLASSES - 1],
            },
        ],
        "outputs": [
            {
                "name": "image",
                "shape": list(IMAGE_SHAPE),
                "dtype": "float32",
                "range": [0.0, 1.0],
                "module_range": [-1.0, 1.0],
            }
        ],
    }


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Generator output [-1, 1] -> the [0, 1] pixels the importer stores (and the
    classifiers were trained on)."""
    return (images + 1) / 2


# ------------------------------------------------------------------------------ training


def gan_step(
    generator: nn.Module,
    discriminator: nn.Module,
    g_optimizer,
    d_optimizer,
    real: torch.Tensor,
    labels: torch.Tensor,
    z: torch.Tensor,
) -> tuple[float, float]:
    """One discriminator step then one generator step (non-saturating loss): (d, g) loss.

    `real` is in [-1, 1]. The discriminator sees real and generated images in one forward
    (one DDP all-reduce); the generator step goes through the unwrapped discriminator, whose
    weights are the same on every rank after the D step, so only the generator's gradients
    are all-reduced for it (the D gradients it leaves behind are cleared before the next D
    step).
    """
    n = real.shape[0]
    fake = generator(z, labels)
    logits = discriminator(torch.cat([real, fake.detach()]), torch.cat([labels, labels]))
    target = torch.cat([torch.ones(n, device=real.device), torch.zeros(n, device=real.device)])
    d_loss = F.binary_cross_entropy_with_logits(logits.float(), target)
    d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    d_optimizer.step()

    g_logits = unwrap(discriminator)(fake, labels)
    g_loss = F.binary_cross_entropy_with_logits(g_logits.float(), torch.ones_like(g_logits))
    g_optimizer.zero_grad(set_to_none=True)
    g_loss.backward()
    g_optimizer.step()
    return d_loss.item(), g_loss.item()


# ------------------------------------------------------------------------------ scoring


def sample_labels(per_class: int) -> torch.Tensor:
    """Labels 0..9, `per_class` of each, grouped by digit (row c of the grid is digit c)."""
    return torch.arange(NUM_CLASSES).repeat_interleave(per_class)


def score(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How much `images` ([N, 1, 8, 8] in [0, 1]) look like the digits `labels` to a digits
    `classifier`: mean probability of the intended digit (`quality`), fraction classified as
    it (`label_match`), fraction of the digits recognized in most of their samples
    (`coverage`, of all the classifier's classes)."""
    classifier.eval()
    with torch.no_grad():
        probs = torch.softmax(classifier(images).float(), 1)
    predicted = probs.argmax(1)
    return {
        "quality": probs[torch.arange(len(labels)), labels].mean().item(),
        "label_match": (predicted == labels).float().mean().item(),
        "coverage": sum(
            (predicted[labels == c] == c).float().mean().item() > 0.5
            for c in labels.unique().tolist()
        )
        / probs.shape[1],
    }


def noise_images(n: int, seed: int) -> torch.Tensor:
    """Uniform random [0, 1] images, the floor a generator's samples must beat."""
    return torch.rand((n, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed))


def train_scorer(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    seed: int,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> nn.Module:
    """A small digits-cnn trained on `x_train` ([N, 1, 8, 8] in [0, 1]): deterministic from
    `seed` (init, shuffles and dropout all drawn from it)."""

    torch.manual_seed(seed)
    model = build_cnn(SCORER_CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (classifier.eval()(x).argmax(1) == y).float().mean().item()


def load_scorer(uri: str) -> tuple[nn.Module, dict[str, Any]]:
    """A verified digits classifier checkpoint, loaded the way serving loads models (manifest
    verified, weights only); ModelLoadError or SpecError (one line) if it is not one."""

    loaded = load_model(uri, name="scorer")
    recipe = loaded.meta.get("recipe")
    if recipe == RECIPE or loaded.signature.shape != IMAGE_SHAPE:
        raise SpecError(
            f"recipe {RECIPE}: model.config.scorer {uri} is a {recipe} checkpoint with input "
            f"{list(loaded.signature.shape)}; name a digits classifier (digits-cnn or "
            "image-cnn trained on digits, input [1, 8, 8])"
        )
    if loaded.signature.num_classes != NUM_CLASSES:
        raise SpecError(
            f"recipe {RECIPE}: model.config.scorer {uri} has {loaded.signature.num_classes} "
            f"classes; a digits classifier has {NUM_CLASSES}"
        )
    return loaded.module, {"source": uri, "recipe": recipe}


def samples_png(images: torch.Tensor, per_class: int, path: Path) -> None:
    """A 10x10 grid of `images` (grouped by digit, [N, 1, 8, 8] in [0, 1]): row c shows the
    first ten samples conditioned on digit c. matplotlib's Agg backend: no display needed."""

    plt = _pyplot()
    grid = images.view(NUM_CLASSES, per_class, 8, 8)[:, :10]
    fig, axes = plt.subplots(NUM_CLASSES, 10, figsize=(5, 5.3))
    for row in range(NUM_CLASSES):
        for col in range(10):
            ax = axes[row][col]
            ax.imshow(grid[row, col].numpy(), cmap="gray_r", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(str(row), rotation=0, labelpad=8)
    fig.suptitle("digits-gan samples (row = conditioned digit)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------ checkpoints


@dataclass
class Networks:
    """Both networks (DDP-wrapped or not) and their optimizers: what a checkpoint holds."""

    generator: nn.Module
    discriminator: nn.Module
    g_optimizer: torch.optim.Optimizer
    d_optimizer: torch.optim.Optimizer

    def load(self, state: dict[str, Any]) -> None:
        """Restore all four from a checkpoint's state (loaded with weights_only=True)."""
        unwrap(self.generator).load_state_dict(state["model"])
        self.g_optimizer.load_state_dict(state["optimizer"])
        unwrap(self.discriminator).load_state_dict(state["discriminator"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])


def write_checkpoint(
    folder: Path,
    nets: Networks,
    *,
    epoch: int,
    scorer: tuple[nn.Module, dict[str, Any]] | None,
    samples: tuple[torch.Tensor, int],
    position: dict[str, Any] | None = None,
) -> None:
    """state.pt and samples.png into `folder`; `session.report` hashes both into the manifest
    after this. `model`/`optimizer` are the generator's (what serving loads, the keys every
    recipe uses), `discriminator`/`d_optimizer` the other pair; an in-run `scorer` is stored
    so a resumed run scores with the same weights. `position`: a just-in-time checkpoint's
    step in the epoch and every rank's random streams and loss sums (`ranks`)."""
    extra: dict[str, Any] = {
        "epoch": epoch,
        "discriminator": unwrap(nets.discriminator).state_dict(),
        "d_optimizer": nets.d_optimizer.state_dict(),
        **(position or {}),
    }
    if scorer is not None:
        model, about = scorer
        extra["scorer"] = {"config": SCORER_CONFIG, "state": model.state_dict(), "about": about}
    save_state(folder, nets.generator, nets.g_optimizer, extra)
    images, per_class = samples
    samples_png(images, per_class, folder / SAMPLES_PNG)


# ------------------------------------------------------------------------------ the loop


def _all_rows(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of `split` (not this rank's shard): the in-run scorer trains on the whole
    train split, so it does not depend on the number of workers."""

    uri = session.context().dataset_uri
    fs = filesystem_for(uri)
    info = read_info(fs, uri)
    shard = read_shard(fs, uri, split, 0, 1, info.feature_shape, equal=False)
    return torch.from_numpy(shard.features).float(), torch.from_numpy(shard.labels)


def _scorer(cfg: GanConfig, seed: int, stored: dict | None) -> tuple[nn.Module, dict[str, Any]]:
    """Rank 0's scorer: the named checkpoint, the one a resumed checkpoint stored, or a new
    one trained on the train split."""

    if cfg.scorer:
        return load_scorer(cfg.scorer)
    if stored is not None:
        model = build_cnn(stored["config"])
        model.load_state_dict(stored["state"])
        return model.eval(), dict(stored["about"])
    x_train, y_train = _all_rows("train")
    model = train_scorer(x_train, y_train, seed=seed, epochs=cfg.scorer_epochs)
    x_val, y_val = _all_rows("val")
    about = {
        "source": "trained in this run (digits-cnn on the train split)",
        "recipe": "digits-cnn",
        "model_config": SCORER_CONFIG,
        "epochs": cfg.scorer_epochs,
        "val_accuracy": accuracy(model, x_val, y_val),
    }
    session.log(f"scorer: digits-cnn trained in-run, val accuracy {about['val_accuracy']:.4f}")
    return model, about


def train_loop(config: dict) -> None:
    """The per-worker loop (see the module docstring)."""
    import ray.train.torch

    cfg = gan_config(config)
    ctx = session.context()
    device = ray.train.torch.get_device()
    shard = session.dataset_shard("train")
    x_train = torch.from_numpy(shard.features).float() * 2 - 1  # the generator's [-1, 1]
    y_train = torch.from_numpy(shard.labels)
    model_config = {
        "latent": cfg.latent,
        "width": cfg.width,
        "num_classes": NUM_CLASSES,
    }

    resume = session.resume_checkpoint()
    stored = None
    if resume is not None:
        # weights_only: a checkpoint holds tensors and plain containers, never code.
        stored = torch.load(resume.path / STATE_FILE, map_location="cpu", weights_only=True)
    scorer, about, noise = None, {}, {}
    labels = sample_labels(cfg.samples_per_class)
    if ctx.is_leader:
        scorer, about = _scorer(cfg, ctx.seed + _SCORER_SEED_OFFSET, (stored or {}).get("scorer"))
        noise = score(scorer, noise_images(len(labels), ctx.seed + _NOISE_SEED_OFFSET), labels)
    (noise_quality,) = all_reduce_sum([noise.get("quality", 0.0)], device)

    torch.manual_seed(ctx.seed)
    generator = ray.train.torch.prepare_model(build_model(model_config))
    discriminator = ray.train.torch.prepare_model(build_discriminator(model_config))
    betas = (cfg.beta1, 0.999)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=ctx.learning_rate, betas=betas)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=ctx.learning_rate, betas=betas)
    nets = Networks(generator, discriminator, g_optimizer, d_optimizer)
    start, first_step, carried = 0, 0, None
    if resume is not None:
        nets.load(stored)
        start, first_step = resume.next_epoch, resume.first_step(ctx.world_size)
        ranks = stored.get("ranks")  # a just-in-time checkpoint: every rank's random streams
        if ranks and len(ranks) == ctx.world_size:
            carried = ranks[ctx.rank]

    meta = {
        "recipe": RECIPE,
        "model_config": model_config,
        "input": {"shape": [cfg.latent], "dtype": "float32"},
        "output": {"shape": list(IMAGE_SHAPE), "dtype": "float32", "range": [0.0, 1.0]},
        "signature": serving_signature(cfg.latent),
        "conditional": True,
        "num_classes": NUM_CLASSES,
        "class_names": [str(i) for i in range(NUM_CLASSES)],
        "noise_score": noise,
        "scorer": about,
        "samples": SAMPLES_PNG,
    }
    sample_z = torch.randn(
        len(labels),
        cfg.latent,
        generator=torch.Generator().manual_seed(ctx.seed + _SAMPLE_SEED_OFFSET),
    )
    scorer_kept = None if cfg.scorer else (scorer, about)

    def samples_now() -> tuple[torch.Tensor, int]:
        """Rank 0's sample grid from the generator as it is now (for samples.png)."""
        g = unwrap(generator).eval()
        with torch.no_grad():
            images = to_unit(g(sample_z.to(device), labels.to(device))).float().cpu()
        g.train()
        return images, cfg.samples_per_class

    steps = len(y_train) // ctx.batch_size
    for epoch in range(start, ctx.epochs):
        rng = seed_epoch(ctx.seed, epoch, ctx.rank)
        order = torch.randperm(len(y_train), generator=rng)
        d_sum = g_sum = 0.0
        begin = min(first_step, steps) if epoch == start else 0
        if begin and carried is not None:  # same ranks: continue exactly where they were
            rng.set_state(carried["generator"])
            torch.set_rng_state(carried["rng"])
            d_sum, g_sum = carried["d_sum"], carried["g_sum"]
        for step in range(begin, steps):
            idx = order[step * ctx.batch_size : (step + 1) * ctx.batch_size]
            z = torch.randn(len(idx), cfg.latent, generator=rng)
            d_loss, g_loss = gan_step(
                generator,
                discriminator,
                g_optimizer,
                d_optimizer,
                x_train[idx].to(device),
                y_train[idx].to(device),
                z.to(device),
            )
            d_sum, g_sum = d_sum + d_loss, g_sum + g_loss
            session.progress(
                epoch, step + 1, steps, d_loss=d_sum / (step + 1), g_loss=g_sum / (step + 1)
            )
            session.checkpoint_if_preempted(
                lambda folder, ranks, e=epoch, s=step + 1: write_checkpoint(
                    folder,
                    nets,
                    epoch=e,
                    scorer=scorer_kept,
                    samples=samples_now(),
                    position={"step": s, "ranks": ranks},
                ),
                epoch=epoch,
                step=step + 1,
                rank_state=lambda g=rng, d=d_sum, gs=g_sum: {
                    "generator": g.get_state(),
                    "rng": torch.get_rng_state(),
                    "d_sum": d,
                    "g_sum": gs,
                },
                meta=meta,
            )
        # Resumed on another world size, the epoch's losses average the steps run here.
        counted = max(steps - begin if begin and carried is None else steps, 1)
        d_mean, g_mean = all_reduce_sum([d_sum / counted, g_sum / counted], device)
        broadcast_buffers(generator)
        images = None
        quality = {"quality": 0.0, "label_match": 0.0, "coverage": 0.0}
        if ctx.is_leader:
            images, _ = samples_now()
            quality = score(scorer, images, labels)
        keys = ("quality", "label_match", "coverage")
        shared = all_reduce_sum([quality[k] for k in keys], device)
        metrics = {
            "g_loss": g_mean / ctx.world_size,
            "d_loss": d_mean / ctx.world_size,
            **dict(zip(keys, shared, strict=True)),
            "noise_quality": noise_quality,
        }
        with tempfile.TemporaryDirectory() as folder:
            keep = ctx.is_leader and ctx.should_checkpoint(epoch)
            if keep:
                write_checkpoint(
                    Path(folder),
                    nets,
                    epoch=epoch,
                    scorer=scorer_kept,
                    samples=(images, cfg.samples_per_class),
                )
            session.report(metrics, epoch=epoch, checkpoint_dir=folder if keep else None, meta=meta)
