"""Variance-preserving diffusion: log-SNR schedules and x / ε / v conversions (SiD2 Sec. 1.1).

z_t = α_t·x + σ_t·ε (SiD2 eq. 1), α_t² = sigmoid(λ_t), σ_t² = sigmoid(−λ_t), λ_t = log(α_t²/σ_t²)
decreasing in t ∈ [0, 1] (t = 0 data, t = 1 noise). The schedules are those of simple diffusion
(Hoogeboom et al., 2023: cosine, "shifted" and "interpolated" cosine) that SiD2 compares and
samples with ('cosine_interpolated_low_32_high_512', SiD2 A.4). Schedule arithmetic runs in
float64 and is returned in the input's floating dtype.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion.flow import expand_like

__all__ = [
    "logsnr_cosine",
    "logsnr_shifted_cosine",
    "logsnr_interpolated_cosine",
    "LogSNRSchedule",
    "alpha_sigma",
    "vp_interpolate",
    "v_target",
    "x_from_v",
    "eps_from_v",
    "x_from_eps",
    "eps_from_x",
]

ScheduleKind = Literal["cosine", "shifted_cosine", "interpolated_cosine"]


def _out_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def _cosine_bounds(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    """Angles a, b with −2·log tan(a) = λ_max and −2·log tan(b) = λ_min."""
    if not logsnr_min < logsnr_max:
        raise ValueError("need logsnr_min < logsnr_max")
    return math.atan(math.exp(-0.5 * logsnr_max)), math.atan(math.exp(-0.5 * logsnr_min))


def _cosine64(t: Tensor, logsnr_min: float, logsnr_max: float) -> Tensor:
    a, b = _cosine_bounds(logsnr_min, logsnr_max)
    return -2.0 * torch.log(torch.tan(a + t.double() * (b - a)))


def _dcosine64(t: Tensor, logsnr_min: float, logsnr_max: float) -> Tensor:
    # d/dt[−2 log tan u] = −2 u'/(sin u cos u) = −4 (b − a)/sin 2u
    a, b = _cosine_bounds(logsnr_min, logsnr_max)
    return -4.0 * (b - a) / torch.sin(2.0 * (a + t.double() * (b - a)))


def _resolution_shift(image_size: int, base_size: int) -> float:
    """Log-SNR offset 2·log(base/image) of simple diffusion's shifted schedule."""
    return 2.0 * math.log(base_size / image_size)


def _shifted64(t: Tensor, image_size: int, base_size: int, lmin: float, lmax: float) -> Tensor:
    return _cosine64(t, lmin, lmax) + _resolution_shift(image_size, base_size)


def _interpolated64(
    t: Tensor, image_size: int, low: int, high: int, lmin: float, lmax: float
) -> Tensor:
    t64 = t.double()
    lam_low = _shifted64(t64, image_size, low, lmin, lmax)
    lam_high = _shifted64(t64, image_size, high, lmin, lmax)
    return t64 * lam_low + (1.0 - t64) * lam_high


def logsnr_cosine(t: Tensor, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> Tensor:
    """Truncated cosine schedule λ_t = −2·log tan(a + t·(b − a)) (simple diffusion's truncated
    form of the α_t = cos(πt/2) schedule of Nichol & Dhariwal); a and b are chosen so that
    λ(0) = λ_max and λ(1) = λ_min.
    """
    return _cosine64(t, logsnr_min, logsnr_max).to(_out_dtype(t))


def logsnr_shifted_cosine(
    t: Tensor,
    image_size: int,
    base_size: int = 64,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
) -> Tensor:
    """Shifted cosine λ_t = λ_cos(t) + 2·log(base/image) (simple diffusion, Hoogeboom et al. 2023):
    an image_size² image gets the SNR a base_size² image has under the plain cosine schedule.
    """
    return _shifted64(t, image_size, base_size, logsnr_min, logsnr_max).to(_out_dtype(t))


def logsnr_interpolated_cosine(
    t: Tensor,
    image_size: int,
    low: int = 32,
    high: int = 512,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
) -> Tensor:
    """Interpolated cosine λ_t = t·λ_shift(base=low) + (1 − t)·λ_shift(base=high) (simple diffusion's
    interpolated schedule; SiD2's 'cosine_interpolated_low_32_high_512'): near t = 0 it
    follows the high-res shift, near t = 1 the low-res shift.
    """
    return _interpolated64(t, image_size, low, high, logsnr_min, logsnr_max).to(_out_dtype(t))


class LogSNRSchedule:
    """A log-SNR schedule λ(t) with its exact derivative and inverse (SiD2 eq. 1–2 ingredients).

    kind: "cosine" (logsnr_cosine), "shifted_cosine" (logsnr_shifted_cosine with image_size,
    base_size) or "interpolated_cosine" (logsnr_interpolated_cosine with image_size, low, high).
    ``dlogsnr_dt`` is analytic (the −dλ/dt factor of SiD2 eq. 2); ``inverse`` maps log-SNR values
    back to t (analytic for the cosine kinds, float64 bisection for the interpolated one), e.g. to
    turn a log-SNR guidance interval into times. No trainable state.
    """

    def __init__(
        self,
        kind: ScheduleKind = "cosine",
        image_size: int = 64,
        base_size: int = 64,
        low: int = 32,
        high: int = 512,
        logsnr_min: float = -15.0,
        logsnr_max: float = 15.0,
    ) -> None:
        if kind not in ("cosine", "shifted_cosine", "interpolated_cosine"):
            raise ValueError(f"unknown log-SNR schedule {kind!r}")
        _cosine_bounds(logsnr_min, logsnr_max)
        self.kind = kind
        self.image_size = int(image_size)
        self.base_size = int(base_size)
        self.low = int(low)
        self.high = int(high)
        self.logsnr_min = float(logsnr_min)
        self.logsnr_max = float(logsnr_max)

    def _lambda64(self, t: Tensor) -> Tensor:
        lmin, lmax = self.logsnr_min, self.logsnr_max
        if self.kind == "shifted_cosine":
            return _shifted64(t, self.image_size, self.base_size, lmin, lmax)
        if self.kind == "interpolated_cosine":
            return _interpolated64(t, self.image_size, self.low, self.high, lmin, lmax)
        return _cosine64(t, lmin, lmax)

    def __call__(self, t: Tensor) -> Tensor:
        """λ(t), same shape as t."""
        return self._lambda64(t).to(_out_dtype(t))

    def dlogsnr_dt(self, t: Tensor) -> Tensor:
        """Exact dλ/dt (< 0): the cosine derivative, plus 2·log(low/high) for the interpolated kind."""
        d = _dcosine64(t, self.logsnr_min, self.logsnr_max)
        if self.kind == "interpolated_cosine":
            d = d + 2.0 * math.log(self.low / self.high)
        return d.to(_out_dtype(t))

    def inverse(self, logsnr: Tensor) -> Tensor:
        """t with λ(t) = logsnr, clamped to [0, 1] (values beyond λ(0) give 0, beyond λ(1) give 1)."""
        lam = logsnr.double()
        if self.kind == "interpolated_cosine":
            t = self._bisect(lam)
        else:
            if self.kind == "shifted_cosine":
                lam = lam - _resolution_shift(self.image_size, self.base_size)
            a, b = _cosine_bounds(self.logsnr_min, self.logsnr_max)
            t = (torch.atan(torch.exp(-0.5 * lam)) - a) / (b - a)
        return t.clamp(0.0, 1.0).to(_out_dtype(logsnr))

    def _bisect(self, lam: Tensor, iterations: int = 60) -> Tensor:
        # λ is decreasing in t: where λ(mid) > target the root lies to the right of mid
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            right = self._lambda64(mid) > lam
            lo = torch.where(right, mid, lo)
            hi = torch.where(right, hi, mid)
        t = 0.5 * (lo + hi)
        # values beyond the range map exactly onto the ends
        t = torch.where(lam >= self._lambda64(lam.new_zeros(())), torch.zeros_like(t), t)
        return torch.where(lam <= self._lambda64(lam.new_ones(())), torch.ones_like(t), t)

    def __repr__(self) -> str:
        return (
            f"LogSNRSchedule(kind={self.kind!r}, image_size={self.image_size}, "
            f"base_size={self.base_size}, low={self.low}, high={self.high}, "
            f"logsnr_min={self.logsnr_min}, logsnr_max={self.logsnr_max})"
        )


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """(α, σ) = (sqrt(sigmoid(λ)), sqrt(sigmoid(−λ))) (SiD2 Sec. 1.1), so α² + σ² = 1; stable for
    large |λ| because sigmoid never forms 1 − (something close to 1).
    """
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def vp_interpolate(x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Forward process z_t = α·x + σ·ε (SiD2 eq. 1); α, σ of shape (B,) or broadcastable."""
    return expand_like(alpha, x) * x + expand_like(sigma, x) * eps


def v_target(x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """v-prediction target v = α·ε − σ·x (Salimans & Ho 2022; SiD2 A.4 mean_type = v)."""
    return expand_like(alpha, x) * eps - expand_like(sigma, x) * x


def x_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x̂ = α·z − σ·v (v-parameterisation inverted with α² + σ² = 1)."""
    return expand_like(alpha, z) * z - expand_like(sigma, z) * v


def eps_from_v(z: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """ε̂ = σ·z + α·v (v-parameterisation inverted with α² + σ² = 1)."""
    return expand_like(sigma, z) * z + expand_like(alpha, z) * v


def x_from_eps(z: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x̂ = (z − σ·ε̂)/α (invert SiD2 eq. 1)."""
    return (z - expand_like(sigma, z) * eps) / expand_like(alpha, z)


def eps_from_x(z: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """ε̂ = (z − α·x̂)/σ (invert SiD2 eq. 1)."""
    return (z - expand_like(alpha, z) * x) / expand_like(sigma, z)
