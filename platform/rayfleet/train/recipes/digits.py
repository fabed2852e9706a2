"""digits-cnn: a small CNN on scikit-learn's 8x8 handwritten digits, data-parallel with DDP.

The quickstart recipe. Deterministic for a fixed seed: model init from the seed, each
epoch's shuffle and dropout from (seed, epoch, rank), state checkpointed at epoch ends, so an
interrupted-and-resumed run ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayfleet.train.recipes.common import train_classifier


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 32, hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels * 2, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(channels * 2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout(torch.flatten(x, 1))
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


def build_model(config: dict) -> DigitsCNN:
    return DigitsCNN(
        channels=int(config.get("channels", 32)),
        hidden=int(config.get("hidden", 128)),
        dropout=float(config.get("dropout", 0.25)),
    )


def train_loop(config: dict) -> None:
    train_classifier(
        build_model,
        config,
        meta={
            "recipe": "digits-cnn",
            "model_config": config,
            "input": {"shape": [1, 8, 8], "dtype": "float32"},
            "num_classes": 10,
        },
    )
