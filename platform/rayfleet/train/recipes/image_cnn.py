"""image-cnn: a small ResNet for any C x H x W image dataset, data-parallel with DDP.

Residual blocks with BatchNorm, which trains this small net several times faster than
GroupNorm did (measured on digits). Under DDP each rank normalizes with its own batch's
statistics, and DDP broadcasts rank 0's running statistics to every rank before each forward
(`broadcast_buffers`), so all ranks evaluate, checkpoint and resume with the same ones. Global
average pooling makes any H x W work (8x8 digits, 32x32 CIFAR-shaped sets, larger). The
per-channel normalization from dataset.json is part of the model (buffers), so serving sends
the raw [0, 1] pixels the importer stored.

Augmentation (random crop with zero padding, horizontal flip) draws from the epoch's
generator, seeded by (seed, epoch, rank): a resumed run replays the same crops. `flip: false`
for data where a mirror image is another class (digits, text in images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayfleet.train.recipes.common import (
    class_names,
    dataset_info,
    normalization,
    train_classifier,
)

RECIPE = "image-cnn"


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _norm(cout)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.skip(x))


class ImageResNet(nn.Module):
    """stem -> `stages` residual blocks (each after the first halves H, W and doubles the
    width) -> global average pooling -> dropout -> linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mean: list[float],
        std: list[float],
        width: int = 32,
        stages: int = 3,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), _norm(width), nn.ReLU()
        )
        blocks, cin = [], width
        for i in range(stages):
            cout = width * 2**i
            blocks.append(ResidualBlock(cin, cout, stride=1 if i == 0 else 2))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem((x - self.mean) / self.std))
        return self.head(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def build_model(config: dict) -> ImageResNet:
    """The model from its model_config: the user's keys plus the dataset's (in_channels,
    num_classes, mean, std), which the training loop adds and serving reads from the meta."""
    channels = int(config["in_channels"])
    return ImageResNet(
        in_channels=channels,
        num_classes=int(config["num_classes"]),
        mean=list(config.get("mean") or [0.0] * channels),
        std=list(config.get("std") or [1.0] * channels),
        width=int(config.get("width", 32)),
        stages=int(config.get("stages", 3)),
        dropout=float(config.get("dropout", 0.1)),
    )


def augmenter(pad: int, flip: bool):
    """A batch augmentation: a random crop of the zero-padded image (per example offsets in
    [0, 2*pad]) and, with `flip`, a horizontal flip of half the examples; all from `g`."""

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if pad > 0:
            padded = F.pad(x, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=g)
            dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=g)
            rows = (dy + torch.arange(h))[:, None, :, None]
            cols = (dx + torch.arange(w))[:, None, None, :]
            batch = torch.arange(n)[:, None, None, None]
            x = padded[batch, torch.arange(c)[None, :, None, None], rows, cols]
        if flip:
            mirror = torch.rand(n, generator=g) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        return x

    return augment


def train_loop(config: dict) -> None:
    info = dataset_info()
    channels, height, width = (int(d) for d in info.feature_shape)
    mean, std = normalization(info, channels)
    model_config = {
        **config,
        "in_channels": channels,
        "num_classes": int(info.num_classes),
        "mean": mean,
        "std": std,
    }
    pad = int(config.get("pad", max(1, min(height, width) // 8)))
    train_classifier(
        build_model,
        model_config,
        augment=augmenter(pad, bool(config.get("flip", True))),
        meta={
            "recipe": RECIPE,
            "model_config": model_config,
            "input": {"shape": [channels, height, width], "dtype": "float32"},
            "num_classes": int(info.num_classes),
            "class_names": class_names(info),
            "normalization": {"mean": mean, "std": std, "applied_by": "model"},
        },
    )
