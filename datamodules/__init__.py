"""Datamodules: the embedded synthetic default and ImageNet (ImageFolder layout, ADM centre crop).

Every batch is ``{"image": (B, 3, R, R) float in [-1, 1], "label": (B,) int64}`` (DESIGN.md contracts).
"""
from __future__ import annotations

from datamodules.imagenet import ImageFolderImages, ImageNetDataModule, adm_center_crop
from datamodules.synthetic import SyntheticDataModule, SyntheticImages

__all__ = [
    "ImageFolderImages",
    "ImageNetDataModule",
    "SyntheticDataModule",
    "SyntheticImages",
    "adm_center_crop",
]
