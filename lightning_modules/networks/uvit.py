"""Residual U-ViT: the SiD2 denoiser (SiD2 Sec. 2.3, eq. 5, Fig. 4; App. A.4 presets).

A U-Net whose high-resolution levels hold convolutional ResBlocks and whose low-resolution levels
hold transformer blocks (the U-ViT of simple diffusion, Hoogeboom et al. 2023), with the blockwise
skip-connections replaced by ONE skip per level:

    f(x) = f_u(U(f_m(D(h)) − D(h)) + h),  h = f_d(x)                      (SiD2 eq. 5)

f_d / f_u are the down / up stages of a level, f_m is the next level (recursively) or the middle
stage, D = 2×2 average pool + linear, U = linear + nearest 2× upsample. Every block starts as the
identity (zero-initialised output layers), hence so does f (``UViT.trunk``). The input image is
space-to-depth patched by p (a 512² image at p = 2 is a 256² × 12 map), projected to channels[0] by a
linear stem, and the trunk's output is projected back by a zero-initialised linear head.

Conditioning: the log-SNR λ (not t: SiD2 trains and samples with different schedules, Sec. 4.1) is
embedded as in simple diffusion through u = atan(exp(−λ/2))·2/π ∈ (0, 1) and a sinusoidal MLP, and
added to a class embedding whose extra row ``num_classes`` is the null class (CFG).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks import (
    AdaLNModulation,
    Attention,
    LabelEmbedder,
    Mlp,
    ResBlock,
    RoPE2D,
    TimestepEmbedder,
    group_norm,
    modulate,
    patchify,
    unpatchify,
)

BlockType = Literal["resblock", "transformer"]
PresetName = Literal["small", "flop_heavy"]


@dataclass(frozen=True)
class UViTConfig:
    """Every hyper-parameter of a Residual U-ViT. Per-level lists run from the top (input) level down;
    the last entry of ``channels`` / ``block_types`` / ``block_dropout`` is the middle stage."""

    resolution: int = 64
    in_channels: int = 3
    patch_size: int = 1
    channels: tuple[int, ...] = (128, 256, 512, 1024)
    block_types: tuple[BlockType, ...] = ("resblock", "resblock", "transformer", "transformer")
    num_down_blocks: tuple[int, ...] = (3, 3, 3)  # encoder depth per non-middle level
    num_up_blocks: tuple[int, ...] = (3, 3, 3)  # decoder depth per non-middle level (E3-D3 = symmetric)
    num_mid_blocks: int = 16
    block_dropout: tuple[float, ...] = (0.0, 0.0, 0.1, 0.1)
    head_dim: int = 64
    mlp_ratio: float = 4.0  # A.2: "mlp in (4), mlp out (4)"
    cond_dim: int | None = None  # None: 4·channels[0] (ADM's time-embedding width)
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    rope: bool = True  # 2-D RoPE in transformer stages (no parameters, so resolutions can change)

    @property
    def num_levels(self) -> int:
        return len(self.channels)

    @property
    def base_size(self) -> int:
        """Side of the patched input map (the top level)."""
        return self.resolution // self.patch_size

    def level_size(self, level: int) -> int:
        return self.base_size // 2**level

    @property
    def embed_dim(self) -> int:
        return self.cond_dim or 4 * self.channels[0]

    def validate(self) -> None:
        """Clear errors for inconsistent configs (checked before anything is built)."""
        n = self.num_levels
        if n < 1:
            raise ValueError("channels must name at least one level")
        for name, value, want in (
            ("block_types", self.block_types, n),
            ("block_dropout", self.block_dropout, n),
            ("num_down_blocks", self.num_down_blocks, n - 1),
            ("num_up_blocks", self.num_up_blocks, n - 1),
        ):
            if len(value) != want:
                raise ValueError(f"{name} has {len(value)} entries, {len(self.channels)} levels need {want}")
        bad = [b for b in self.block_types if b not in ("resblock", "transformer")]
        if bad:
            raise ValueError(f"unknown block type(s) {bad}; use 'resblock' or 'transformer'")
        if self.patch_size < 1 or self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} is not divisible by patch_size {self.patch_size}")
        total = self.patch_size * 2 ** (n - 1)
        if self.resolution % total:
            raise ValueError(
                f"resolution {self.resolution} is not divisible by the total downsampling {total} "
                f"(patch {self.patch_size} × 2^{n - 1} for {n} levels)"
            )
        for c, kind in zip(self.channels, self.block_types):
            if kind == "transformer" and (c % self.head_dim or (self.rope and self.head_dim % 4)):
                raise ValueError(f"transformer width {c} needs a head_dim ({self.head_dim}) dividing it"
                                 + (" and divisible by 4 (RoPE)" if self.rope else ""))
        if any(not 0.0 <= p < 1.0 for p in self.block_dropout):
            raise ValueError(f"block_dropout must lie in [0, 1), got {self.block_dropout}")


# SiD2 App. A.4: the same network for "small" and "flop heavy"; only the patching differs (and at 128² the
# flop-heavy model drops its top 128-channel level), so the middle stage stays at 16² (small) / 32² (flop heavy).
SID2_PATCH: dict[PresetName, dict[int, int]] = {
    "small": {128: 1, 256: 2, 512: 4},
    "flop_heavy": {128: 1, 256: 1, 512: 2},
}


def uvit_preset(name: PresetName, resolution: int, **overrides) -> UViTConfig:
    """SiD2 App. A.4 "small" / "flop_heavy" U-ViT at 128 / 256 / 512 (``overrides`` replace any field).

    ``num_updown_blocks`` is accepted as an override for symmetric depths; ``num_down_blocks`` /
    ``num_up_blocks`` give asymmetric E/D depths (Sec. 4.3, e.g. E3-D5 = (3, 3, 3) / (5, 5, 5)).
    """
    if name not in SID2_PATCH:
        raise ValueError(f"unknown SiD2 preset {name!r}; use one of {sorted(SID2_PATCH)}")
    if resolution not in SID2_PATCH[name]:
        raise ValueError(f"SiD2 presets exist for resolutions {sorted(SID2_PATCH[name])}, got {resolution}")
    # cond_dim pinned to 4·128 so that dropping the top level at 128² leaves the embedding as it is
    cfg = UViTConfig(resolution=resolution, patch_size=SID2_PATCH[name][resolution], cond_dim=512)
    if name == "flop_heavy" and resolution == 128:
        # A.4: "for 128^2 resolutions the top-level layer (128 channels) is entirely removed"
        cfg = replace(cfg, channels=cfg.channels[1:], block_types=cfg.block_types[1:],
                      block_dropout=cfg.block_dropout[1:], num_down_blocks=cfg.num_down_blocks[1:],
                      num_up_blocks=cfg.num_up_blocks[1:])
    updown = overrides.pop("num_updown_blocks", None)
    if updown is not None:
        updown = tuple(updown) if isinstance(updown, (list, tuple)) else (int(updown),) * (cfg.num_levels - 1)
        overrides = {"num_down_blocks": updown, "num_up_blocks": updown, **overrides}
    return replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


class GridRoPE(RoPE2D):
    """2-D RoPE whose tables are rebuilt from the config instead of saved, so a checkpoint loads into
    the same network at another resolution (SiD2 Sec. 2.2 flop-heavy fine-tune 256 → 512)."""

    def __init__(self, head_dim: int, grid_size: int) -> None:
        super().__init__(head_dim, grid_size)
        self._non_persistent_buffers_set.update({"freqs_cos", "freqs_sin"})


class TransformerBlock(nn.Module):
    """x ← x + g₁·Attn(mod(norm(x))); x ← x + g₂·MLP(mod(norm(x))) on (B, N, C) tokens (ViT block with
    adaLN-Zero conditioning, DiT §3.2): QK-norm attention and a 4× GELU MLP (the ``12·C²`` linears of
    SiD2 App. A.2 ``transformer_gflops``); gates start at 0, so the block starts as the identity."""

    def __init__(self, dim: int, cond_dim: int, head_dim: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, dim // head_dim, qkv_bias=True, qk_norm=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.modulation = AdaLNModulation(cond_dim, dim, num_chunks=6)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, c: Tensor, rope: RoPE2D | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)
        h, _ = self.attn(modulate(self.norm1(x), shift1, scale1), rope=rope)
        x = x + gate1.unsqueeze(1) * self.dropout(h)
        h = self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x + gate2.unsqueeze(1) * self.dropout(h)


class Stage(nn.Module):
    """``num_blocks`` blocks of one type at one resolution, (B, C, H, W) → (B, C, H, W) (f_d, f_u or f_m)."""

    def __init__(self, cfg: UViTConfig, level: int, num_blocks: int) -> None:
        super().__init__()
        dim, kind, drop = cfg.channels[level], cfg.block_types[level], cfg.block_dropout[level]
        self.kind = kind
        if kind == "resblock":
            self.blocks = nn.ModuleList(ResBlock(dim, cfg.embed_dim, drop) for _ in range(num_blocks))
            self.rope = None
        else:
            self.blocks = nn.ModuleList(
                TransformerBlock(dim, cfg.embed_dim, cfg.head_dim, cfg.mlp_ratio, drop) for _ in range(num_blocks)
            )
            self.rope = GridRoPE(cfg.head_dim, cfg.level_size(level)) if cfg.rope and num_blocks else None

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        if self.kind == "resblock":
            for block in self.blocks:
                x = block(x, c)
            return x
        b, ch, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # raster order, as RoPE expects
        for block in self.blocks:
            tokens = block(tokens, c, self.rope)
        return tokens.transpose(1, 2).reshape(b, ch, h, w)


class ResidualLevel(nn.Module):
    """One level of SiD2 eq. 5: f(x) = f_u(U(f_m(D(h)) − D(h)) + h), h = f_d(x).

    D = 2×2 average pool then a linear map to the inner width; U = a linear map back then nearest 2×
    upsampling (the 1×1 map commutes with nearest upsampling, so it runs on the small map). U's bias
    starts at 0, so an identity f_m gives U(0) = 0 and the level is the identity when f_d, f_u are.
    """

    def __init__(self, cfg: UViTConfig, level: int, inner: nn.Module) -> None:
        super().__init__()
        outer_dim, inner_dim = cfg.channels[level], cfg.channels[level + 1]
        self.down = Stage(cfg, level, cfg.num_down_blocks[level])
        self.pool_proj = nn.Conv2d(outer_dim, inner_dim, 1)  # D's linear
        self.inner = inner
        self.unpool_proj = nn.Conv2d(inner_dim, outer_dim, 1)  # U's linear
        nn.init.zeros_(self.unpool_proj.bias)
        self.up = Stage(cfg, level, cfg.num_up_blocks[level])

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.down(x, c)
        d = self.pool_proj(F.avg_pool2d(h, 2))
        u = self.unpool_proj(self.inner(d, c) - d)
        return self.up(F.interpolate(u, scale_factor=2.0, mode="nearest") + h, c)


def logsnr_to_unit(logsnr: Tensor) -> Tensor:
    """u = atan(exp(−λ/2))·2/π ∈ (0, 1): the cosine-schedule time of λ (simple diffusion's log-SNR input)."""
    return torch.atan(torch.exp(-0.5 * logsnr.float().clamp(-40.0, 40.0))) * (2.0 / math.pi)


class UViT(nn.Module):
    """Residual U-ViT denoiser ``forward(z, logsnr, y) -> v̂`` on (B, C, H, W) pixels (SiD2 Sec. 2.3).

    The second argument is the log-SNR λ of z (B,), not t: the network is independent of the noise
    schedule, which SiD2 changes between training and sampling (Sec. 4.1).
    """

    def __init__(self, cfg: UViTConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        p, c0 = cfg.patch_size, cfg.channels[0]
        self.stem = nn.Linear(p * p * cfg.in_channels, c0)
        self.t_embedder = TimestepEmbedder(cfg.embed_dim, scale=1000.0)  # u ∈ (0, 1) as DDPM's 0…1000 steps
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.embed_dim, cfg.class_dropout_prob)
        trunk: nn.Module = Stage(cfg, cfg.num_levels - 1, cfg.num_mid_blocks)  # f_m of the innermost level
        for level in reversed(range(cfg.num_levels - 1)):
            trunk = ResidualLevel(cfg, level, trunk)
        self.trunk = trunk
        self.norm_out = group_norm(c0)
        self.head = nn.Linear(c0, p * p * cfg.in_channels)
        nn.init.zeros_(self.head.weight)  # the prediction starts at 0 (DiT's zero-initialised output)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def blocks(self) -> list[nn.Module]:
        """Every ResBlock / TransformerBlock, top level first (the FSDP2 shard units)."""
        return [m for m in self.modules() if isinstance(m, (ResBlock, TransformerBlock))]

    def condition(self, logsnr: Tensor, y: Tensor, force_drop: Tensor | None = None) -> Tensor:
        """c = emb(u(λ)) + emb(y) (B, cond_dim); ``force_drop`` pins the class dropout."""
        return self.t_embedder(logsnr_to_unit(logsnr)) + self.y_embedder(y, force_drop=force_drop)

    def forward(self, z: Tensor, logsnr: Tensor, y: Tensor, force_drop: Tensor | None = None) -> Tensor:
        cfg = self.cfg
        b, ch, height, width = z.shape
        if ch != cfg.in_channels or height != cfg.resolution or width != cfg.resolution:
            raise ValueError(
                f"expected input (B, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}), got {tuple(z.shape)}"
            )
        c = self.condition(logsnr, y, force_drop)
        side = cfg.base_size
        h = self.stem(patchify(z, cfg.patch_size))  # space-to-depth, then linear: (B, side², C0)
        h = h.transpose(1, 2).reshape(b, -1, side, side).contiguous()  # NCHW: CPU GroupNorm 4-17x slower channels-last
        h = F.silu(self.norm_out(self.trunk(h, c)))
        out = self.head(h.flatten(2).transpose(1, 2))
        return unpatchify(out, cfg.patch_size, cfg.in_channels, height, width)


# ---------------------------------------------------------------- compute (SiD2 App. A.2)


def transformer_gflops(size: int, num_channels: int, blocks: int) -> float:
    """SiD2 App. A.2: 12·C²·N linears (q, k, v, out, MLP in 4, MLP out 4) + 2·N²·C attention, N = size²."""
    linears = 12 * num_channels**2 * blocks * size**2
    attn = 2 * size**4 * blocks * num_channels
    return (linears + attn) / 1000**3


def resblock_gflops(size: int, num_channels: int, blocks: int) -> float:
    """SiD2 App. A.2: two 3×3 convolutions C → C per pixel, 2·3²·C² per block."""
    return (2 * 3**2) * num_channels**2 * blocks * size**2 / 1000**3


def uvit_formula_gflops(cfg: UViTConfig) -> float:
    """Forward GFLOPs of one image by SiD2 App. A.2 (matmuls and attention only; the formulas count one
    operation per multiply-add, so torch.utils.flop_counter — 2 per multiply-add — reports about twice this)."""
    total = 0.0
    for level, (dim, kind) in enumerate(zip(cfg.channels, cfg.block_types)):
        last = level == cfg.num_levels - 1
        blocks = cfg.num_mid_blocks if last else cfg.num_down_blocks[level] + cfg.num_up_blocks[level]
        fn = transformer_gflops if kind == "transformer" else resblock_gflops
        total += fn(cfg.level_size(level), dim, blocks)
    return total


def measured_gflops(net: UViT, batch: int = 1) -> float:
    """Forward GFLOPs per image counted by torch.utils.flop_counter (works on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = net.cfg
    device = next(net.parameters()).device
    z = torch.zeros(batch, cfg.in_channels, cfg.resolution, cfg.resolution, device=device)
    logsnr = torch.zeros(batch, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(z, logsnr, y)
    return counter.get_total_flops() / batch / 1e9


__all__ = [
    "GridRoPE",
    "ResidualLevel",
    "SID2_PATCH",
    "Stage",
    "TransformerBlock",
    "UViT",
    "UViTConfig",
    "logsnr_to_unit",
    "measured_gflops",
    "resblock_gflops",
    "transformer_gflops",
    "uvit_formula_gflops",
    "uvit_preset",
]
