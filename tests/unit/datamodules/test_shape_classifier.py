"""The synthetic data's shape classifier names shapes, not colours: it recognises held-out shapes in colours it
never saw them in, and scores images with the right colour but the wrong shape as wrong."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speedrun_diffusion.datamodules.pixels import uint8_to_model_range
from speedrun_diffusion.datamodules.shape_classifier import (
    colour_augment,
    render_dataset,
    shape_accuracy,
    train_shape_classifier,
)
from speedrun_diffusion.datamodules.shapes import SHAPES
from speedrun_diffusion.datamodules.synthetic import COLOUR_SCHEMES, render_uint8

RESOLUTION = 32


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    # ~25 s on 2 cores: about 80 % of held-out shapes (the default recipe, ~3 min, names 2,000 of 2,000)
    return train_shape_classifier(RESOLUTION, num_images=6000, epochs=2, batch_size=64, progress=False)


def test_recognises_held_out_shapes_in_unseen_colours(classifier: torch.nn.Module) -> None:
    images, labels = render_dataset(400, RESOLUTION, seed=0, split="val")
    accuracy, per_class = shape_accuracy(classifier, images, labels)
    assert accuracy > 0.7, per_class  # chance: 1/8
    rotated_colours = images[:, [2, 0, 1]]  # every shape in hues the training set never gave it
    assert shape_accuracy(classifier, rotated_colours, labels)[0] > 0.7


def test_right_colour_wrong_shape_counts_only_where_the_shape_is_right(classifier: torch.nn.Module) -> None:
    # a "generator" that draws a circle in every class's colour: only the circle classes (0 and 8) are right
    rng = np.random.default_rng(0)
    hues = list(COLOUR_SCHEMES.values())
    labels = torch.arange(10).repeat(20)
    images = torch.stack([uint8_to_model_range(render_uint8(SHAPES["circle"], hues[int(k) % len(hues)], RESOLUTION, rng))
                          for k in labels])
    accuracy, per_class = shape_accuracy(classifier, images, labels)
    circle_classes = torch.tensor([k % len(SHAPES) == 0 for k in range(10)])
    assert per_class[circle_classes].min() > 0.6, per_class
    assert per_class[~circle_classes].mean() < 0.15, per_class
    assert accuracy < 0.35


def test_colour_augment_permutes_or_greys_channels_and_keeps_luminance_sum() -> None:
    images = torch.stack([torch.full((4, 4), v) for v in (-0.5, 0.1, 0.9)])[None].repeat(64, 1, 1, 1)
    out = colour_augment(images, torch.Generator().manual_seed(0))
    values = out[:, :, 0, 0]
    assert torch.allclose(values.sum(1), images[:, :, 0, 0].sum(1), atol=1e-6)
    greyed = torch.isclose(values, values.mean(1, keepdim=True)).all(1)
    permuted = torch.isclose(values.sort(1).values, torch.tensor([-0.5, 0.1, 0.9])).all(1)
    assert (greyed | permuted).all() and greyed.any() and permuted.any()
    assert len({tuple(v.tolist()) for v in values[permuted]}) > 1  # more than one channel order drawn


def test_shape_accuracy_rejects_mismatched_inputs() -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(len(SHAPES)))
    with pytest.raises(ValueError, match="expected images"):
        shape_accuracy(net, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="expected images"):
        shape_accuracy(net, torch.zeros(4, 3, 8, 8), torch.zeros(5, dtype=torch.long))
