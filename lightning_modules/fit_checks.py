"""Checks that a checkpoint or a datamodule fits a recipe, before a mismatch reaches torch deep in a run.

:func:`check_checkpoint_matches` refuses a checkpoint of another recipe, or one whose network tensors differ in name
or shape, naming the file; :func:`check_data_fits` refuses a datamodule with more classes than the network's label
table or images of another shape, naming the config keys.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from speedrun_diffusion.lightning_modules.weights import CheckpointMismatchError, check_written_by, state_dict_diff

__all__ = ["check_checkpoint_matches", "check_data_fits"]


def check_checkpoint_matches(recipe: Any, checkpoint: Mapping[str, Any], source: Any = None) -> None:
    """Raise :class:`CheckpointMismatchError` (naming ``source``) if ``checkpoint`` was written by another
    recipe class or holds network tensors whose names or shapes differ from ``recipe``'s."""
    where = f"checkpoint {source}" if source is not None else "checkpoint"
    check_written_by(checkpoint, recipe.recipe_name(), where, "pass a checkpoint of this recipe to --ckpt_path (or "
                     "change model.class_path to the recipe that wrote it)")
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping) or not state:
        return
    ours = {k: v for k, v in recipe.state_dict().items() if torch.is_tensor(v)}
    if any(type(v).__name__ == "DTensor" for v in ours.values()):
        return  # sharded: the strategy's loader checks the distributed state
    if not getattr(recipe, "strict_loading", True):  # a recipe may leave e.g. frozen encoders out of checkpoints
        ours, state = ({k: v for k, v in d.items() if k in state and k in ours} for d in (ours, state))
    diff = state_dict_diff(ours, state)
    if diff:
        raise CheckpointMismatchError(
            f"{where} does not fit {type(recipe).__name__} as configured: {diff}. Resume with the configuration "
            "that wrote it (its hyper_parameters are stored in the checkpoint)")


def check_data_fits(recipe: Any, datamodule: Any) -> None:
    """Raise ValueError naming the config keys when the datamodule's classes or image shape do not fit the
    recipe's network (before a label beyond the embedding table or a wrong-size image reaches torch)."""
    if datamodule is None:
        return
    data_classes = getattr(datamodule, "num_classes", None)
    try:
        model_classes = recipe.num_classes
    except AttributeError:
        model_classes = None
    if isinstance(data_classes, int) and isinstance(model_classes, int) and data_classes > model_classes:
        raise ValueError(
            f"data.init_args.num_classes={data_classes} but {type(recipe).__name__} was built for num_classes="
            f"{model_classes} (label {model_classes} is its null class): make model.init_args.num_classes match")
    expected = recipe.expected_image_shape()
    shape = getattr(datamodule, "image_shape", None)
    if expected is not None and shape is not None and not hasattr(datamodule, "latent_shape"):
        if tuple(shape) != tuple(expected):
            raise ValueError(
                f"the datamodule yields images of shape {tuple(shape)} (data.init_args.resolution) but "
                f"{type(recipe).__name__}'s network takes {tuple(expected)} (model input size / in_channels): "
                "make them match")
