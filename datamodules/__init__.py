"""Datamodules: the embedded synthetic default and ImageNet (ImageFolder layout, ADM centre crop).

Every batch is ``{"image": (B, 3, R, R) float in [-1, 1], "label": (B,) int64}`` (DESIGN.md contracts);
`LatentDataModule` batches are ``{"latent", "label"}`` (+ ``"image"`` / ``"repa_target"``) from a latent cache.
"""
from __future__ import annotations

from speedrun_diffusion.datamodules.imagenet import ImageFolderImages, ImageNetDataModule, adm_center_crop
from speedrun_diffusion.datamodules.latents import LatentDataModule, LatentDataset, SplitForPredict
from speedrun_diffusion.datamodules.synthetic import SyntheticDataModule, SyntheticImages

__all__ = [
    "ImageFolderImages",
    "ImageNetDataModule",
    "LatentDataModule",
    "LatentDataset",
    "SplitForPredict",
    "SyntheticDataModule",
    "SyntheticImages",
    "adm_center_crop",
]
