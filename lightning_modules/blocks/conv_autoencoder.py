"""Convolutional autoencoder blocks of the LDM KL autoencoder (Rombach et al. 2022, App. G; the
"AutoencoderKL" used by SD-VAE and SR-DiT's INVAE, reference/srdit/README "INVAE").

Unconditioned, so they differ from the adaLN ``ResBlock`` of ``resblock.py`` (SiD2 / U-ViT): GroupNorm
with affine parameters, a 1×1 ``nin_shortcut`` when the width changes, and no zero initialisation.
Submodule names follow the LDM code so its state dicts load key-for-key.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .resblock import group_norm


class ConvResnetBlock(nn.Module):
    """x' + conv₂(drop(swish(norm₂(conv₁(swish(norm₁(x))))))), x' = x or nin_shortcut(x) (LDM ``ResnetBlock``).

    GroupNorm(32, eps 1e-6) with affine weights, 3×3 convolutions (He et al. 2016 pre-activation form).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # 1×1 projection only when the width changes (LDM: conv_shortcut=False)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class SpatialSelfAttention(nn.Module):
    """x + proj_out(softmax(q kᵀ/√C) v) over the H·W positions, one head (LDM ``AttnBlock``).

    q, k, v and the output projection are 1×1 convolutions of GroupNorm(x).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (B, C, H, W) → (B, 1 head, HW, C); SDPA's default scale is C^-1/2 as in LDM
        q, k, v = (proj(hn).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then conv 3×3 stride 2 (LDM ``Downsample`` with_conv): H → H/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: LDM's choice for even sizes


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then conv 3×3 (LDM ``Upsample`` with_conv): H → 2H."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


__all__ = ["ConvResnetBlock", "Downsample", "SpatialSelfAttention", "Upsample"]
