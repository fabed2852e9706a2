"""text-lstm: an embedding + LSTM classifier over an imported text dataset, with DDP.

Inputs are the importer's token ids (int64, right-padded with 0 to max_length). A text's
length is its count of non-zero ids, so the model packs each batch with
`pack_padded_sequence` and the LSTM never reads padding: the prediction for a text does not
depend on how much padding follows it, or on what else is in the batch. The classifier reads
the last layer's final hidden state (both directions when bidirectional).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from rayfleet.train.recipes.common import class_names, dataset_info, train_classifier

RECIPE = "text-lstm"


class TextLSTM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed: int = 64,
        hidden: int = 64,
        layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.lstm = nn.LSTM(
            embed,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        # An empty text (all padding) still gets one step, reading the pad embedding (zeros).
        lengths = (ids != 0).sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(
            self.embedding(ids), lengths, batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.lstm(packed)
        last = torch.cat([h[-2], h[-1]], 1) if self.lstm.bidirectional else h[-1]
        return self.head(self.dropout(last))


def build_model(config: dict) -> TextLSTM:
    """The model from its model_config: the user's keys plus the dataset's vocab_size and
    num_classes, which the training loop adds and serving reads from the meta."""
    return TextLSTM(
        vocab_size=int(config["vocab_size"]),
        num_classes=int(config["num_classes"]),
        embed=int(config.get("embed", 64)),
        hidden=int(config.get("hidden", 64)),
        layers=int(config.get("layers", 1)),
        bidirectional=bool(config.get("bidirectional", False)),
        dropout=float(config.get("dropout", 0.1)),
    )


def train_loop(config: dict) -> None:
    info = dataset_info()
    (max_length,) = (int(d) for d in info.feature_shape)
    vocab = list(getattr(info, "vocab", None) or [])
    model_config = {
        **config,
        "vocab_size": len(vocab),
        "num_classes": int(info.num_classes),
    }
    train_classifier(
        build_model,
        model_config,
        dtype=torch.int64,
        meta={
            "recipe": RECIPE,
            "model_config": model_config,
            "input": {"shape": [max_length], "dtype": "int64"},
            "num_classes": int(info.num_classes),
            "class_names": class_names(info),
            "vocab_size": len(vocab),
            "max_length": max_length,
            "tokenizer": getattr(info, "tokenizer", None),
        },
    )
