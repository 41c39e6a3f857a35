"""Linear flow matching: interpolant, velocity target, conversions, time shift and time sampling.

Convention (DESIGN contract): x_t = (1 − t)·x0 + t·ε with t = 0 data and t = 1 noise, velocity
v = dx_t/dt = ε − x0 (SR-DiT eq. 1–2 with α(t) = 1 − t, σ(t) = t: the "Linear" path of SiT, RAE
and SR-DiT; RAE eq. 2 regresses the same ε − x). Time shift t' = s·t / (1 + (s − 1)·t) with
s = sqrt(D / 4096), D = C·H·W (SR-DiT eq. 3; RAE Sec. 4.2 "dimension-dependent noise schedule
shift", after Esser et al. 2024).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "expand_like",
    "flow_interpolate",
    "flow_velocity_target",
    "x0_from_velocity",
    "noise_from_velocity",
    "shift_time",
    "dimension_shift",
    "TimeSampler",
]


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-sample quantity t of shape (B,) against x of shape (B, …) as (B, 1, …, 1).

    Scalars (0-d) and tensors that already have x's rank are returned unchanged.
    """
    if t.ndim == 0 or t.ndim == x.ndim:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"expected t of shape ({x.shape[0]},) or a scalar, got {tuple(t.shape)}")
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def flow_interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Linear interpolant x_t = (1 − t)·x0 + t·ε (SR-DiT eq. 1 with α(t) = 1 − t, σ(t) = t)."""
    t = expand_like(t, x0)
    return (1 - t) * x0 + t * noise


def flow_velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Velocity target v = dx_t/dt = ε − x0 (SR-DiT eq. 2 for the linear path)."""
    return noise - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Data estimate x0 = x_t − t·v (invert x_t = x0 + t·v, from SR-DiT eq. 1–2)."""
    return x_t - expand_like(t, x_t) * v


def noise_from_velocity(x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """Noise estimate ε = x_t + (1 − t)·v (invert x_t = ε − (1 − t)·v, SR-DiT eq. 1–2)."""
    return x_t + (1 - expand_like(t, x_t)) * v


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Time shift t' = s·t / (1 + (s − 1)·t), clamped to [0, 1] (SR-DiT eq. 3; RAE Sec. 4.2).

    s > 1 moves t towards the noise end; t = 0 and t = 1 are fixed points; s = 1 is the identity.
    Computed in t's dtype (float32 in the SR-DiT loss, float64 in its sampler grid).
    """
    return (shift * t / (1 + (shift - 1) * t)).clamp(0.0, 1.0)


def dimension_shift(dim: int, base_dim: int = 4096) -> float:
    """Dimension-dependent shift s = sqrt(D / D_base) (RAE Sec. 4.2; SR-DiT eq. 3).

    E.g. an SR-DiT latent 32·16·16 = 8192 gives s = √2; RAE's DINOv2-B 768·16·16 gives √48.
    """
    if dim <= 0 or base_dim <= 0:
        raise ValueError("dimensions must be positive")
    return math.sqrt(dim / base_dim)


class TimeSampler:
    """Training-time distribution of t, then the time shift (SR-DiT Sec. 3.3: t ~ U(0, 1) then
    eq. 3; RAE transport: `uniform` or `logit-normal_0_1` (Esser et al. 2024), then the shift).

    uniform: t = t_max·U with U ~ U[0, 1). logit_normal: t = sigmoid(mean + std·Φ⁻¹(U)), i.e.
    sigmoid(N(mean, std²)) drawn by the inverse CDF (one uniform per sample, as RAE does) and truncated
    to [0, t_max] (U rescaled onto [0, Φ((logit t_max − mean)/std)], then a clamp). Finally t ← shift_time(t, shift). ``t_max`` defaults to 1; RAE's
    transport restricts training times to [0, 0.999] (``t_max=0.999``).
    """

    def __init__(
        self,
        kind: Literal["uniform", "logit_normal"] = "uniform",
        mean: float = 0.0,
        std: float = 1.0,
        shift: float = 1.0,
        t_max: float = 1.0,
    ) -> None:
        if kind not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown time distribution {kind!r}")
        if std <= 0 or shift <= 0 or not 0 < t_max <= 1:
            raise ValueError("need std > 0, shift > 0 and 0 < t_max <= 1")
        self.kind = kind
        self.mean = float(mean)
        self.std = float(std)
        self.shift = float(shift)
        self.t_max = float(t_max)

    def __call__(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw t of shape (batch_size,), float32, in [0, 1]."""
        return self.from_uniform(torch.rand(batch_size, device=device, generator=generator))

    def from_uniform(self, u: Tensor) -> Tensor:
        """The deterministic map U ~ U[0, 1) → shifted t (one uniform per sample; replays recorded draws)."""
        if self.kind == "uniform":
            t = u * self.t_max
        else:
            if self.t_max < 1:
                # truncate at t_max by the inverse CDF (RAE transport): U' = Φ(b)·U, b = (logit(t_max) − mean)/std
                b = (math.log(self.t_max / (1 - self.t_max)) - self.mean) / self.std
                u = u * (0.5 * (1 + math.erf(b / math.sqrt(2.0))))
            # inverse-CDF draw: Φ⁻¹(u) = √2·erfinv(2u − 1); u = 0 maps to −∞, i.e. t = 0
            normal = math.sqrt(2.0) * torch.erfinv(2 * u - 1)
            t = torch.sigmoid(self.mean + self.std * normal).clamp(0.0, self.t_max)
        return shift_time(t, self.shift)

    def __repr__(self) -> str:
        return (
            f"TimeSampler(kind={self.kind!r}, mean={self.mean}, std={self.std}, "
            f"shift={self.shift}, t_max={self.t_max})"
        )
