"""INVAE: the LDM-style KL autoencoder that tokenizes images for SR-DiT (reference/srdit/README "INVAE").

SR-DiT trains on latents of REPA-E's end-to-end tuned "e2e-invae" (``VAE_F16D32``: 16× downsampling,
32 channels; Leng et al. 2025), an ``AutoencoderKL`` of the Latent Diffusion code (Rombach et al. 2022):

    encode:  x ─Encoder─▶ quant_conv 1×1 ─▶ [mean; logvar],  logvar ← clamp(logvar, −30, 20)
             z = mean + exp(logvar/2)·ε              (posterior sample; ``mode`` = mean)
    decode:  z ─post_quant_conv 1×1─▶ Decoder ─▶ image in [−1, 1]

The network works on raw latents. The diffusion model sees ``scaling_factor``·z (0.3099 for
VAE_F16D32) and generated latents are decoded as decode(z / 0.3099) — see ``to_diffusion`` /
``from_diffusion``. SR-DiT pre-computes one posterior *sample* per image (no flips).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks.conv_autoencoder import (
    ConvResnetBlock,
    Downsample,
    SpatialSelfAttention,
    Upsample,
)
from speedrun_diffusion.lightning_modules.blocks.resblock import group_norm
from speedrun_diffusion.lightning_modules.networks.gaussian_autoencoder import DiagonalGaussian, GaussianAutoencoder


@dataclass(frozen=True)
class INVAEConfig:
    """Constructor of the LDM Encoder/Decoder pair; defaults are VAE_F16D32 (69,836,067 parameters)."""

    embed_dim: int = 32
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    scaling_factor: float = 0.3099

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _resolutions(cfg: INVAEConfig) -> list[int]:
    """Feature-map side at each level (resolution / 2^level)."""
    return [cfg.resolution // 2**i for i in range(len(cfg.ch_mult))]


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNet blocks), ``attn`` (after each block, or empty) and a resampler."""

    def __init__(self, widths: Sequence[tuple[int, int]], attention: bool, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ConvResnetBlock(i, o, dropout) for i, o in widths)
        self.attn = nn.ModuleList(SpatialSelfAttention(o) for _, o in widths) if attention else nn.ModuleList()

    def run(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class _Mid(nn.Module):
    """ResNet → attention → ResNet at the lowest resolution (LDM ``mid``)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ConvResnetBlock(channels, channels, dropout)
        self.attn_1 = SpatialSelfAttention(channels)
        self.block_2 = ConvResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """conv_in → levels (ResNet blocks [+ attention], downsample except last) → mid → norm, swish, conv → 2·z."""

    def __init__(self, cfg: INVAEConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        widths_in = (1, *cfg.ch_mult)
        self.down = nn.ModuleList()
        for level, (res, mult) in enumerate(zip(_resolutions(cfg), cfg.ch_mult)):
            c_in, c_out = cfg.ch * widths_in[level], cfg.ch * mult
            widths = [(c_in if j == 0 else c_out, c_out) for j in range(cfg.num_res_blocks)]
            stage = _Level(widths, res in cfg.attn_resolutions, cfg.dropout)
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(c_out)
            self.down.append(stage)
        top = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Mid(top, cfg.dropout)
        self.norm_out = group_norm(top)
        self.conv_out = nn.Conv2d(top, 2 * cfg.embed_dim, 3, padding=1)  # double_z: mean and logvar

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in → mid → levels deepest first (num_res_blocks + 1 ResNet blocks [+ attention], upsample
    except level 0) → norm, swish, conv → image. ``up[i]`` is level i, as in the LDM state dict."""

    def __init__(self, cfg: INVAEConfig) -> None:
        super().__init__()
        top = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.embed_dim, top, 3, padding=1)
        self.mid = _Mid(top, cfg.dropout)
        levels: list[_Level] = []
        c_in = top
        for level in reversed(range(len(cfg.ch_mult))):
            c_out = cfg.ch * cfg.ch_mult[level]
            widths = [(c_in if j == 0 else c_out, c_out) for j in range(cfg.num_res_blocks + 1)]
            stage = _Level(widths, _resolutions(cfg)[level] in cfg.attn_resolutions, cfg.dropout)
            if level != 0:
                stage.upsample = Upsample(c_out)
            levels.insert(0, stage)
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage.run(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class INVAE(GaussianAutoencoder):
    """KL autoencoder (module docstring). Tokenizer contract (DESIGN): ``encode(images) -> latents`` and
    ``decode(latents) -> images`` on raw latents; ``posterior(images)`` gives the Gaussian itself; ``forward`` is
    the official ``forward(x, return_recon=True)``: (posterior, z sample, reconstruction)."""

    def __init__(self, cfg: INVAEConfig | None = None) -> None:
        super().__init__()
        cfg = INVAEConfig() if cfg is None else cfg
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.embed_dim, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(embed_dim, H/f, W/f) of a ``cfg.resolution`` image."""
        side = self.cfg.resolution // self.cfg.downsampling_factor
        return (self.cfg.embed_dim, side, side)

    def moments(self, images: Tensor) -> Tensor:
        """[mean; logvar] for images in [−1, 1] (official ``encode``; clamped to (−30, 20) by the posterior)."""
        return self.quant_conv(self.encoder(images))

    def decode(self, latents: Tensor) -> Tensor:
        """Images (≈ [−1, 1]) from raw latents (official ``decode(z).sample``); the diffusion scale is
        ``scaling_factor`` (0.3099 for VAE_F16D32: ``to_diffusion`` / ``from_diffusion``)."""
        return self.decoder(self.post_quant_conv(latents))


__all__ = ["DiagonalGaussian", "Decoder", "Encoder", "INVAE", "INVAEConfig"]
