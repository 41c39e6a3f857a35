"""Pixel-range conventions shared by every image datamodule.

DESIGN.md contract: images enter models as float tensors in [-1, 1], channels first. Files and
renderers produce uint8 RGB arrays (H, W, 3); this module is the single place that maps between
the two, with ``x / 127.5 - 1`` (so 0 -> -1 and 255 -> 1 exactly).
"""
from __future__ import annotations

import numpy as np
import torch


def uint8_to_model_range(image: np.ndarray) -> torch.Tensor:
    """Map a uint8 RGB array (H, W, 3) to a float32 tensor (3, H, W) in [-1, 1] by ``x / 127.5 - 1``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
    # numpy, not torch, does the arithmetic: single-threaded, so it never contends with the
    # trainer's threads in the main process; the result is a fresh array torch can own
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw /= 127.5
    chw -= 1.0
    return torch.from_numpy(chw)


def model_range_to_uint8(image: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`uint8_to_model_range`: (3, H, W) in [-1, 1] -> uint8 (H, W, 3), rounded and clipped."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a tensor of shape (3, H, W), got {tuple(image.shape)}")
    scaled = (image.detach().float().cpu() + 1.0) * 127.5
    return scaled.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
