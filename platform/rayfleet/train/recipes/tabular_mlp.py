"""tabular-mlp: an MLP on the feature columns of an imported table, with DDP.

The importer stores the values as read and the per-feature mean and std of the train split;
the model standardizes its input itself (buffers), so serving sends raw feature rows in the
order of dataset.json's feature_names.
"""

from __future__ import annotations

import torch
from torch import nn

from rayfleet.train.recipes.common import (
    class_names,
    dataset_info,
    normalization,
    train_classifier,
)

RECIPE = "tabular-mlp"


class TabularMLP(nn.Module):
    def __init__(
        self,
        features: int,
        num_classes: int,
        mean: list[float],
        std: list[float],
        hidden: int = 64,
        layers: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        body, width = [], features
        for _ in range(layers):
            body += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((x - self.mean) / self.std))


def build_model(config: dict) -> TabularMLP:
    """The model from its model_config: the user's keys plus the dataset's (features,
    num_classes, mean, std), which the training loop adds and serving reads from the meta."""
    features = int(config["features"])
    return TabularMLP(
        features=features,
        num_classes=int(config["num_classes"]),
        mean=list(config.get("mean") or [0.0] * features),
        std=list(config.get("std") or [1.0] * features),
        hidden=int(config.get("hidden", 64)),
        layers=int(config.get("layers", 2)),
        dropout=float(config.get("dropout", 0.1)),
    )


def train_loop(config: dict) -> None:
    info = dataset_info()
    (features,) = (int(d) for d in info.feature_shape)
    mean, std = normalization(info, features)
    model_config = {
        **config,
        "features": features,
        "num_classes": int(info.num_classes),
        "mean": mean,
        "std": std,
    }
    train_classifier(
        build_model,
        model_config,
        meta={
            "recipe": RECIPE,
            "model_config": model_config,
            "input": {"shape": [features], "dtype": "float32"},
            "num_classes": int(info.num_classes),
            "class_names": class_names(info),
            "feature_names": getattr(info, "feature_names", None),
            "normalization": {"mean": mean, "std": std, "applied_by": "model"},
        },
    )
