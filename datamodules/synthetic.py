"""Embedded default data: procedurally generated, class-conditional images (no download, no files).

Class convention. Class ``k`` is the pair (shape ``k mod 8``, colour scheme ``k mod 5``) from
:data:`datamodules.shapes.SHAPES` x :data:`COLOUR_SCHEMES`. Because 8 and 5 are coprime, the 40
classes ``0 … 39`` are exactly the 40 distinct pairs (Chinese remainder theorem), and any prefix of
classes differs in shape, colour or both — the first 8 classes all have different shapes and
neighbouring classes never share a colour. Item ``i`` has label ``i mod num_classes``, so every
class is equally frequent (up to one item).

Nuisance variation (what the model must learn to ignore): position, scale, rotation, small jitter
of the scheme's hue/saturation/value, and a background texture — a linear gradient, soft stripes or
low-frequency noise (a sum of three random plane waves) — in two random low-saturation colours.
Every random quantity of item ``i`` is drawn by :func:`render_uint8` from
``numpy.random.default_rng([seed, split, i])`` (split 0 = ``"train"``, 1 = ``"val"``), so an item is
identical across calls, dataset instances, processes and DataLoader workers, and the ``"train"`` and
``"val"`` splits are different images.

Rendering is antialiased analytically: the coverage of a pixel is ``clip(0.5 - d / pixel, 0, 1)``
with ``d`` the shape's signed distance at the pixel centre, a one-pixel linear ramp across the
outline (exact for straight edges, close for curved ones) — one sample per pixel instead of
supersampling, evaluated only in the shape's bounding window, so any resolution is cheap (accepted:
16 … 1024 px; 32 … 512 is the tested range). Images are made as uint8 RGB (H, W, 3), then mapped to
float (3, H, W) in [-1, 1] by ``x / 127.5 - 1`` (DESIGN.md contract).
"""
from __future__ import annotations

import colorsys
import math
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from speedrun_diffusion.datamodules.image_datamodule import ImageDataModule
from speedrun_diffusion.datamodules.loaders import check_loader_args, eval_loader, train_loader
from speedrun_diffusion.datamodules.pixels import uint8_to_model_range
from speedrun_diffusion.datamodules.shapes import SHAPES, ShapeSDF

COLOUR_SCHEMES: dict[str, float] = {
    "crimson": 0.985,
    "amber": 0.11,
    "emerald": 0.38,
    "azure": 0.58,
    "violet": 0.78,
}
"""Colour scheme name -> hue (HSV, in turns) of the shape's fill; class k uses scheme ``k mod 5``."""

MAX_CLASSES = len(SHAPES) * len(COLOUR_SCHEMES)
MIN_RESOLUTION = 16
MAX_RESOLUTION = 1024
_SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1}
_NUM_DRAWS = 25


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    """Raise ValueError unless ``value`` is an int (not bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


@lru_cache(maxsize=8)
def _pixel_centres(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: a row vector x (1, R) and a column vector y (R, 1)."""
    centres = ((np.arange(resolution, dtype=np.float32) + 0.5) * (2.0 / resolution) - 1.0).astype(np.float32)
    # shared by every call through the cache: must never be written to
    centres.flags.writeable = False
    return centres[None, :], centres[:, None]


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB float32 (3,) in [0, 1] of an HSV colour; hue wraps around."""
    return np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _plane_wave(x: np.ndarray, y: np.ndarray, kx: float, ky: float, phase: float) -> np.ndarray:
    """``sin(kx x + ky y + phase)`` on the grid, via sin(a + b) = sin a cos b + cos a sin b.

    Only 1-D sines are evaluated; the 2-D result is two outer products (the costly part at 512 px).
    """
    along_x = kx * x + phase
    along_y = ky * y
    return np.sin(along_x) * np.cos(along_y) + np.cos(along_x) * np.sin(along_y)


def _background(draws: list[float], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Background texture (R, R, 3) in [0, 1]: gradient, stripes or low-frequency noise between two muted colours."""
    hue, saturation, value = draws[1], 0.08 + 0.27 * draws[2], 0.3 + 0.55 * draws[3]
    first = _hsv(hue, saturation, value)
    second = _hsv(hue + 0.2 * (draws[4] - 0.5), saturation, min(max(value + 0.5 * (draws[5] - 0.5), 0.15), 0.95))
    direction = 2 * math.pi * draws[6]
    kind = int(draws[0] * 3)
    if kind == 0:
        # linear gradient across the whole frame (|projection| <= sqrt 2)
        slope = 0.5 / math.sqrt(2.0)
        mix = 0.5 + (slope * math.cos(direction)) * x + (slope * math.sin(direction)) * y
    elif kind == 1:
        # 2 to 6 soft stripes across the frame
        frequency = math.pi * (2.0 + 4.0 * draws[7])
        wave = _plane_wave(x, y, frequency * math.cos(direction), frequency * math.sin(direction), 2 * math.pi * draws[8])
        mix = 0.5 + 0.5 * wave
    else:
        # low-frequency noise: three plane waves with random directions, frequencies and phases
        mix = np.full((y.shape[0], x.shape[1]), 0.5, dtype=np.float32)
        for index in range(3):
            angle = 2 * math.pi * draws[9 + index]
            frequency = 1.5 + 2.5 * draws[12 + index]
            phase = 2 * math.pi * draws[15 + index]
            mix += _plane_wave(x, y, frequency * math.cos(angle), frequency * math.sin(angle), phase) / 6.0
    return first + (second - first) * mix[..., None]


# a bound on |(u, v)| of every shape's outline in SHAPES (the crescent's horns reach furthest)
_SHAPE_EXTENT = 1.2
_SHADOW_OFFSET = (0.06, 0.08)


def _window(centre: float, half_width: float, resolution: int) -> slice:
    """Pixel indices whose centres lie within ``half_width`` of ``centre`` (frame coordinates [-1, 1]), plus one pixel."""
    first = math.floor((centre - half_width + 1.0) * resolution / 2.0) - 1
    last = math.ceil((centre + half_width + 1.0) * resolution / 2.0) + 1
    return slice(max(first, 0), min(max(last, 0), resolution))


def render_uint8(shape: ShapeSDF, hue: float, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """Render one image (R, R, 3) uint8: a shaded, antialiased shape with a soft shadow over a textured background.

    ``hue`` is the colour scheme's fill hue; every other parameter is drawn from ``rng``. The shape
    and its shadow are evaluated only inside their bounding window (outside it both are exactly 0).
    """
    # Python floats keep numpy in float32 (weak scalars) instead of promoting arrays to float64
    draws = rng.random(_NUM_DRAWS).tolist()
    x, y = _pixel_centres(resolution)
    pixel = 2.0 / resolution
    image = _background(draws, x, y)

    scale = 0.4 + 0.22 * draws[18]
    # keep the centre far enough in that most of the shape is inside the frame
    reach = 1.0 - 0.85 * scale
    centre_x, centre_y = reach * (2 * draws[19] - 1), reach * (2 * draws[20] - 1)
    rotation = 2 * math.pi * draws[21]
    cos_r, sin_r = math.cos(rotation), math.sin(rotation)
    shadow_softness = max(0.12, 2 * pixel)
    half_width = _SHAPE_EXTENT * scale + math.hypot(*_SHADOW_OFFSET) + shadow_softness
    rows, cols = _window(centre_y, half_width, resolution), _window(centre_x, half_width, resolution)
    dx, dy = x[:, cols] - centre_x, y[rows, :] - centre_y
    u = (cos_r / scale) * dx + (sin_r / scale) * dy
    v = (cos_r / scale) * dy - (sin_r / scale) * dx
    patch = image[rows, cols]

    # soft shadow: the same shape shifted down-right, with a wide smooth edge
    shadow_x, shadow_y = _SHADOW_OFFSET
    shadow_u = (cos_r * shadow_x + sin_r * shadow_y) / scale
    shadow_v = (cos_r * shadow_y - sin_r * shadow_x) / scale
    shadow = np.clip(0.5 - shape(u - shadow_u, v - shadow_v) * (scale / shadow_softness), 0.0, 1.0)
    shadow = shadow * shadow * (3.0 - 2.0 * shadow)
    patch = patch * (1.0 - 0.45 * shadow)[..., None]

    distance = shape(u, v) * scale
    coverage = np.clip(0.5 - distance / pixel, 0.0, 1.0)
    fill = _hsv(hue + 0.05 * (draws[22] - 0.5), 0.55 + 0.3 * draws[23], 0.72 + 0.23 * draws[24])
    # light from the top-left, and a darker rim just inside the outline, to read as an object
    light = 1.0 - (0.22 / (scale * math.sqrt(2.0))) * (dx + dy)
    rim = np.clip(1.0 + distance / max(0.05, 1.5 * pixel), 0.0, 1.0)
    shaded_fill = np.clip(fill * (light * (1.0 - 0.3 * rim))[..., None], 0.0, 1.0)
    image[rows, cols] = patch + (shaded_fill - patch) * coverage[..., None]
    return np.clip(image * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


class SyntheticImages(Dataset):
    """Class-conditional procedural images; item ``i`` is ``{"image": (3, R, R) in [-1, 1], "label": int64}``.

    Label of item ``i`` is ``i mod num_classes``; class ``k`` is shape ``k mod 8`` in colour scheme
    ``k mod 5`` (see the module docstring). Items are pure functions of (seed, split, index).
    """

    def __init__(
        self,
        num_samples: int,
        resolution: int = 32,
        num_classes: int = 10,
        seed: int = 0,
        split: Literal["train", "val"] = "train",
    ) -> None:
        _check_int("num_samples", num_samples, 1)
        _check_int("resolution", resolution, MIN_RESOLUTION, MAX_RESOLUTION)
        _check_int("num_classes", num_classes, 1, MAX_CLASSES)
        _check_int("seed", seed, 0)
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        self.num_samples = int(num_samples)
        self.resolution = int(resolution)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.split = split

    def __len__(self) -> int:
        return self.num_samples

    @property
    def class_names(self) -> list[str]:
        """Human-readable ``"<colour> <shape>"`` name of every class, indexed by label."""
        shapes, schemes = list(SHAPES), list(COLOUR_SCHEMES)
        return [f"{schemes[k % len(schemes)]} {shapes[k % len(shapes)]}" for k in range(self.num_classes)]

    def _check_index(self, index: int) -> int:
        """Normalise a (possibly negative) index, raising IndexError when out of range."""
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return int(index) % self.num_samples

    def label(self, index: int) -> int:
        """Class of item ``index``: ``index mod num_classes``."""
        return self._check_index(index) % self.num_classes

    def image_uint8(self, index: int) -> np.ndarray:
        """Image of item ``index`` as uint8 RGB (R, R, 3), drawn from the generator seeded by (seed, split, index)."""
        index = self._check_index(index)
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        shape = list(SHAPES.values())[label % len(SHAPES)]
        hue = list(COLOUR_SCHEMES.values())[label % len(COLOUR_SCHEMES)]
        return render_uint8(shape, hue, self.resolution, rng)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "image": uint8_to_model_range(self.image_uint8(index)),
            "label": torch.tensor(self.label(index), dtype=torch.int64),
        }


class SyntheticDataModule(ImageDataModule):
    """LightningDataModule over :class:`SyntheticImages`: the embedded default data of every tiny config.

    Train and val are disjoint seeded splits of the same class-conditional distribution; batches are
    ``{"image": (B, 3, R, R) float in [-1, 1], "label": (B,) int64}``. Loader conventions are those of
    :mod:`datamodules.loaders` (seeded shuffle + drop_last for training, ordered for evaluation).
    """

    def __init__(
        self,
        resolution: int = 32,
        num_classes: int = 10,
        train_size: int = 10_000,
        val_size: int = 1_000,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # the recipe logs num_classes etc.; a larger model table must not clash
        check_loader_args(batch_size, num_workers)
        if val_batch_size is not None:
            check_loader_args(val_batch_size, num_workers)
        # datasets are lazy and cheap, so build them now: bad arguments fail at construction time
        self.train_set = SyntheticImages(train_size, resolution, num_classes, seed, "train")
        self.val_set = SyntheticImages(val_size, resolution, num_classes, seed, "val")

    @property
    def class_names(self) -> list[str]:
        return self.train_set.class_names

    def _val_batch_size(self) -> int:
        return self.hparams.val_batch_size or self.hparams.batch_size

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.hparams.batch_size, self.hparams.num_workers, self.hparams.seed,
                            self.hparams.num_classes)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.val_set, self._val_batch_size(), self.hparams.num_workers, self.hparams.num_classes)

    def test_dataloader(self) -> DataLoader:
        return eval_loader(self.val_set, self._val_batch_size(), self.hparams.num_workers, self.hparams.num_classes)

    def predict_dataloader(self) -> DataLoader:
        return eval_loader(self.val_set, self._val_batch_size(), self.hparams.num_workers, self.hparams.num_classes)
