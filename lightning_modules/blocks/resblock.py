"""Convolutional residual block with adaptive scale/shift conditioning (ADM, Dhariwal & Nichol 2021;
the 'ResBlock' of simple diffusion's U-ViT and of SiD2 App. A.4 ``block_type``)."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .modulation import AdaLNModulation


def group_norm(channels: int, groups: int = 32, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with the largest group count ≤ ``groups`` that divides ``channels`` (32 for the paper widths)."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6, affine=affine)


class ResBlock(nn.Module):
    """x + conv₂(dropout(SiLU(modulate(norm₂(conv₁(SiLU(norm₁(x)))), c)))) on (B, C, H, W).

    Two 3×3 convolutions C → C (the ``2·3²·C²`` multiply-adds per pixel of SiD2 App. A.2
    ``resblock_gflops``). The condition c (B, cond_dim) sets a per-channel scale and shift after the
    second norm (ADM "scale-shift norm"), regressed by a zero-initialised adaLN layer; ``conv2`` is
    zero-initialised, so the block is exactly the identity at init (SiD2 Sec. 2.3).
    """

    def __init__(self, channels: int, cond_dim: int, dropout: float = 0.0, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = group_norm(channels, groups)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = group_norm(channels, groups, affine=False)  # the modulation supplies scale and shift
        self.modulation = AdaLNModulation(cond_dim, channels, num_chunks=2)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # identity at init
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return x + self.conv2(self.dropout(F.silu(h)))
