"""Input embeddings of the denoisers: timestep (sinusoidal, Gaussian Fourier), class labels with a null
class, patchify / unpatchify with a patch-embedding conv, and the fixed 2-D sin-cos position table."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(
    t: Tensor, dim: int, max_period: float = 10000.0, scale: float = 1.0, cos_first: bool = True
) -> Tensor:
    """Sinusoidal features of a (B,) scalar (Transformer PE of Vaswani et al. 2017 §3.5; DiT/SiT
    ``TimestepEmbedder.timestep_embedding``) → (B, dim) float32.

    f_k = exp(−ln(max_period)·k/half), k < half = dim // 2, args = scale·t·f_k; output [cos, sin] (DiT/SiT
    order) or [sin, cos]; a zero column is appended when ``dim`` is odd. Scale: SiT and SR-DiT feed t in
    [0, 1] raw (``scale=1``); the original DiT feeds integer steps 0…999, i.e. ``scale=1000`` for t ∈ [0, 1].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (scale * t.float())[:, None] * freqs[None]
    parts = [torch.cos(args), torch.sin(args)] if cos_first else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (B,) → MLP(sinusoidal_embedding(t)) (B, dim): DiT §3.2 timestep embedding, keys ``mlp.0``/``mlp.2``.

    The sinusoid is computed in float32 (its high frequencies need it) and cast to the weight dtype.
    """

    def __init__(self, dim: int, frequency_dim: int = 256, scale: float = 1.0, max_period: float = 10000.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.scale = scale
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        emb = sinusoidal_embedding(t, self.frequency_dim, self.max_period, self.scale)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features [sin(2π x W), cos(2π x W)], W ~ N(0, scale²) fixed (Tancik et al. 2020;
    NCSN++ ``GaussianFourierProjection``, Song et al. 2021 — the "fourier" embedding used for log-SNR).

    W (dim // 2 frequencies) is a persistent non-trainable buffer, so a checkpoint fixes it.
    """

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"GaussianFourierEmbedding needs an even dim, got {dim}")
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        # x·W first, then ·2·π: the operation order of RAE's GaussianFourierEmbedding (bitwise replay)
        args = x.float()[:, None] * self.W[None] * 2 * math.pi
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class FourierTimestepEmbedder(GaussianFourierEmbedding):
    """t (B,) → MLP([sin 2πtW, cos 2πtW]) (B, dim): the Gaussian Fourier time embedding of RAE App. F
    ("we replace the timestep embedding with a Gaussian Fourier embedding layer", after Song et al. 2021).

    t ∈ [0, 1] is used raw. W (``frequency_dim`` / 2 = 256 values, N(0, scale²), scale 1) is a frozen
    persistent buffer drawn per network, so checkpoints must carry it; keys ``W``, ``mlp.0``, ``mlp.2``
    as in RAE's ``t_embedder``.
    """

    def __init__(self, dim: int, frequency_dim: int = 512, scale: float = 1.0) -> None:
        super().__init__(frequency_dim, scale)
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(super().forward(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class-label table with a null class for classifier-free guidance (DiT §3.2, Ho & Salimans 2022).

    ``embedding_table`` has num_classes + 1 rows; id ``num_classes`` is "no class" (DESIGN contract). In
    training each label is replaced by the null id with probability ``dropout_prob`` (one uniform per sample,
    as in DiT/SiT). An explicit ``force_drop`` mask replaces that draw and is applied in any mode (DiT's
    ``force_drop_ids``), so tests and CFG can pin the decisions.
    """

    def __init__(self, num_classes: int, dim: int, dropout_prob: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def drop_labels(
        self, labels: Tensor, generator: torch.Generator | None = None, force_drop: Tensor | None = None
    ) -> Tensor:
        """Labels with the dropped entries set to the null id (``force_drop`` true, else u < dropout_prob)."""
        if force_drop is None:
            drop = torch.rand(labels.shape, device=labels.device, generator=generator) < self.dropout_prob
        else:
            drop = force_drop.to(device=labels.device, dtype=torch.bool)
        return torch.where(drop, torch.full_like(labels, self.null_id), labels)

    def forward(self, labels: Tensor, train: bool | None = None, force_drop: Tensor | None = None) -> Tensor:
        train = self.training if train is None else train
        if force_drop is not None or (train and self.dropout_prob > 0):
            labels = self.drop_labels(labels, force_drop=force_drop)
        return self.embedding_table(labels)


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) → (B, (H/p)(W/p), p·p·C): raster token order, per-token channels ordered (p_row, p_col, C)
    (the DiT/SR-DiT ``unpatchify`` layout, so a linear head's output maps straight back to pixels)."""
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(
    tokens: Tensor, patch_size: int, channels: int, height: int | None = None, width: int | None = None
) -> Tensor:
    """Inverse of ``patchify``: (B, N, p·p·C) → (B, C, H, W); ``height``/``width`` in pixels, a square image if omitted."""
    b, n, d = tokens.shape
    p = patch_size
    if d != p * p * channels:
        raise ValueError(f"token width {d} != patch_size² · channels = {p * p * channels}")
    if height is None and width is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} tokens do not form a square grid; pass height and width")
        gh = gw = side
    else:
        height = width if height is None else height
        width = height if width is None else width
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not divisible by patch size {p}")
        gh, gw = height // p, width // p
        if gh * gw != n:
            raise ValueError(f"{n} tokens do not match a {gh}x{gw} grid")
    x = tokens.reshape(b, gh, gw, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * p, gw * p)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens: Conv2d(kernel = stride = p), raster order (ViT, Dosovitskiy et al.
    2021 eq. 1; DiT ``x_embedder``). ``proj`` matches the official key ``x_embedder.proj``."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


def _sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """[sin(pos·ω_k)]_k ++ [cos(pos·ω_k)]_k, ω_k = 10000^(−k/(dim/2)), k < dim/2 (float64)."""
    omega = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    args = pos.reshape(-1, 1) * omega[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def sincos_2d_pos_embed(dim: int, grid_size: int, num_extra_tokens: int = 0) -> Tensor:
    """Fixed 2-D sin-cos table (num_extra + G², dim), float32 (MAE ``get_2d_sincos_pos_embed``, used by DiT/SiT).

    Extra (cls/register) rows are zero. For the patch at (row r, col c), raster index r·G + c, the first dim/2
    channels encode the column c and the last dim/2 the row r (MAE's meshgrid puts w first), each half
    [sin(pos·ω_k)] ++ [cos(pos·ω_k)], ω_k = 10000^(−k/(dim/4)). Computed in float64, rounded once.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows = coords.repeat_interleave(grid_size)  # r of raster index r·G + c
    cols = coords.repeat(grid_size)  # c of raster index r·G + c
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=-1)
    emb = torch.cat([torch.zeros(num_extra_tokens, dim, dtype=torch.float64), emb], dim=0)
    return emb.float()
