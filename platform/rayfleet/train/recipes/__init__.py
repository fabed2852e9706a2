"""Built-in training recipes, by the name a spec's `model.recipe` uses.

The registry is plain data (no torch import), so validating a spec stays fast.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from rayfleet.errors import SpecError

# The weights file in a recipe's checkpoint folder (what serving loads, weights only).
STATE_FILE = "state.pt"

# Dimensions of `feature_shape` per dataset kind: image [C, H, W], table [F], text [max_length].
KIND_RANKS = {"image": 3, "table": 1, "text": 1}


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
    # The dataset kinds (dataset.json `kind`) the recipe trains on; empty: no dataset read.
    dataset_kinds: tuple[str, ...] = ()
    # A fixed feature shape the model is built for (digits-cnn); empty: any shape of the kind.
    feature_shape: tuple[int, ...] = ()
    # module:function checking a `model.config` (SpecError, one line) before Ray starts, so a
    # bad value fails the command at once, not in every worker attempt; empty: none.
    config_check: str = ""


_CLASSIFIER_METRICS = ("train_loss", "val_loss", "val_accuracy")


def _builtin(
    module: str,
    summary: str,
    *,
    config_keys: tuple[str, ...],
    dataset_kinds: tuple[str, ...] = (),
    metrics: tuple[str, ...] = _CLASSIFIER_METRICS,
    feature_shape: tuple[int, ...] = (),
    config_check: str = "",
) -> Recipe:
    """A recipe of this package: `module` defines `train_loop` and `build_model`."""
    path = f"rayfleet.train.recipes.{module}"
    return Recipe(
        f"{path}:train_loop",
        needs_dataset=bool(dataset_kinds),
        summary=summary,
        model_builder=f"{path}:build_model",
        config_keys=config_keys,
        metrics=metrics,
        dataset_kinds=dataset_kinds,
        feature_shape=feature_shape,
        config_check=f"{path}:{config_check}" if config_check else "",
    )


RECIPES: dict[str, Recipe] = {
    "digits-cnn": _builtin(
        "digits",
        "small CNN on 8x8 handwritten digits (the quickstart)",
        config_keys=("channels", "hidden", "dropout"),
        dataset_kinds=("image",),
        feature_shape=(1, 8, 8),
    ),
    "digits-gan": _builtin(
        "digits_gan",
        "conditional DCGAN on 8x8 digits; samples scored by a digits classifier",
        config_keys=("latent", "width", "beta1", "scorer", "scorerEpochs", "samplesPerClass"),
        dataset_kinds=("image",),
        # quality first: what a sweep of this recipe maximizes (a classifier's mean
        # probability of the digit each sample was asked for); no val_* metrics, no accuracy.
        metrics=("quality", "label_match", "coverage", "g_loss", "d_loss", "noise_quality"),
        feature_shape=(1, 8, 8),
        config_check="gan_config",
    ),
    "image-cnn": _builtin(
        "image_cnn",
        "small ResNet (BatchNorm, global pooling) on any C x H x W image dataset",
        config_keys=("width", "stages", "dropout", "flip", "pad"),
        dataset_kinds=("image",),
    ),
    "text-lstm": _builtin(
        "text_lstm",
        "embedding + LSTM classifier over an imported text dataset's vocabulary",
        config_keys=("embed", "hidden", "layers", "bidirectional", "dropout"),
        dataset_kinds=("text",),
    ),
    "tabular-mlp": _builtin(
        "tabular_mlp",
        "MLP on the normalized feature columns of an imported table",
        config_keys=("hidden", "layers", "dropout"),
        dataset_kinds=("table",),
    ),
    "synthetic-mlp": _builtin(
        "synthetic",
        "784-1024-1024-10 MLP on generated tensors (benchmarks)",
        config_keys=("inputs", "hidden", "layers", "classes", "steps", "warmupSteps"),
        metrics=("loss", "steps_per_sec", "samples_per_sec", "model_flops_per_step"),
    ),
}


def check_config(recipe_name: str, config: dict[str, Any]) -> None:
    """The recipe's own check of `model.config` (its `config_check`), where it has one."""
    recipe = RECIPES.get(recipe_name)
    if recipe is None or not recipe.config_check:
        return
    module, function = recipe.config_check.split(":")
    getattr(importlib.import_module(module), function)(config)


def check_dataset(recipe_name: str, info: Any) -> None:
    """SpecError (one line) unless recipe `recipe_name` can train on dataset `info`.

    Checked before Ray starts, so a table given to an image recipe fails in a second with the
    fix, not minutes later inside a worker with a shape error. `info` is a DatasetInfo; a
    descriptor written before `kind` existed is an image dataset. Recipes that read no dataset
    (or user entrypoints, `recipe_name` empty) accept anything.
    """
    recipe = RECIPES.get(recipe_name)
    if recipe is None or not recipe.dataset_kinds:
        return
    kind = getattr(info, "kind", None) or "image"
    shape = [int(d) for d in info.feature_shape]
    where = f"recipe {recipe_name}: dataset {info.name} is a {kind} dataset {shape}"
    accepts = " or ".join(recipe.dataset_kinds)
    if kind not in recipe.dataset_kinds:
        # Suggest recipes of the same family (same metrics): a classifier's user wants a
        # classifier for this data, not the digits GAN.
        fits = sorted(
            n for n, r in RECIPES.items() if kind in r.dataset_kinds and r.metrics == recipe.metrics
        )
        other = f"use model.recipe {' or '.join(fits)}" if fits else "use another recipe"
        raise SpecError(
            f"{where}, but it trains on {accepts} datasets; {other}, or import {accepts} "
            f"data with `rayfleet data import` and point spec.dataset at it"
        )
    if recipe.feature_shape and tuple(shape) != recipe.feature_shape:
        fixed = list(recipe.feature_shape)
        raise SpecError(
            f"{where}, but it is built for feature shape {fixed} only; use model.recipe "
            f"image-cnn for other image sizes, or import the images with --size "
            f"{fixed[-1]}x{fixed[-2]}"
        )
    if len(shape) != KIND_RANKS.get(kind, len(shape)):
        raise SpecError(
            f"{where}, but a {kind} dataset has {KIND_RANKS[kind]} feature dimensions; "
            "re-import it with `rayfleet data import`"
        )
