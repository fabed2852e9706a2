"""Built-in training recipes, by the name a spec's `model.recipe` uses.

The registry is plain data (no torch import), so validating a spec stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

# The weights file in a recipe's checkpoint folder (what serving loads, weights only).
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class Recipe:
    target: str  # module:function, a per-worker loop taking the config dict
    needs_dataset: bool
    summary: str
    # module:function building the recipe's torch module from its model_config (serving).
    model_builder: str = ""
    # What a sweep may tune and optimize: the `model.config` keys the recipe reads and the
    # metrics it reports every epoch. Checked before any trial starts.
    config_keys: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()


RECIPES: dict[str, Recipe] = {
    "digits-cnn": Recipe(
        "rayfleet.train.recipes.digits:train_loop",
        needs_dataset=True,
        model_builder="rayfleet.train.recipes.digits:build_model",
        summary="small CNN on 8x8 handwritten digits (the quickstart)",
        config_keys=("channels", "hidden", "dropout"),
        metrics=("train_loss", "val_loss", "val_accuracy"),
    ),
    "synthetic-mlp": Recipe(
        "rayfleet.train.recipes.synthetic:train_loop",
        needs_dataset=False,
        model_builder="rayfleet.train.recipes.synthetic:build_model",
        summary="784-1024-1024-10 MLP on generated tensors (benchmarks)",
        config_keys=("inputs", "hidden", "layers", "classes", "steps", "warmupSteps"),
        metrics=("loss", "steps_per_sec", "samples_per_sec", "model_flops_per_step"),
    ),
}
