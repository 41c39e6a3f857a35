"""Loss weightings w(λ) of VP diffusion (SiD2 Sec. 2.1, Fig. 3; VDM++, Kingma & Gao 2023).

A weighting is a function of the log-SNR λ. The loss of SiD2 eq. 2 is E_t[−dλ/dt · w(λ_t) · ‖·‖²];
the same loss can be written on ε-errors or on x-errors because ‖ε − ε̂‖² = exp(λ)·‖x − x̂‖²
(SiD2 Sec. 2.1), so every weighting here names the space it multiplies.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "SID2_LOSS_BIAS",
    "edm_monotonic_weight",
    "sid2_loss_bias",
    "sigmoid_weight",
    "time_shifted_bias",
]

ErrorSpace = Literal["eps", "x"]

# SiD2 App. A.4 loss_type = sigmoid:b per resolution (Table 1: larger images need a more negative bias).
SID2_LOSS_BIAS: dict[int, float] = {128: 0.0, 256: -1.0, 512: -3.0}


def sid2_loss_bias(resolution: int) -> float:
    """Bias b of SiD2 App. A.4; other resolutions shift by −2·log 2 ≈ −1.386 per doubling from 128 (Sec. 2.1)."""
    if resolution in SID2_LOSS_BIAS:
        return SID2_LOSS_BIAS[resolution]
    return -2.0 * math.log(resolution / 128)


def sigmoid_weight(logsnr: Tensor, bias: float | Tensor, space: ErrorSpace = "eps") -> Tensor:
    """Sigmoid weighting (VDM++; SiD2 eq. 4): σ(b − λ) on ‖ε − ε̂‖², equivalently exp(b)·σ(λ − b) on ‖x − x̂‖².

    The two forms are the same loss since ‖ε − ε̂‖² = exp(λ)‖x − x̂‖² and σ(b − λ)·exp(λ) = exp(b)·σ(λ − b).
    (SiD2 eq. 4 prints the constant as exp(−b); the identity needs exp(+b) — e.g. b = −3, λ = 2:
    σ(−5)·e² = 0.04945 = e⁻³·σ(5). A constant factor, so it only rescales the loss.) The x-form is
    monotonically increasing in λ, SiD2's argument for it over EDM-monotonic (Sec. 2.1).
    """
    if space == "eps":
        return torch.sigmoid(bias - logsnr)
    if space == "x":
        return torch.exp(torch.as_tensor(bias, dtype=logsnr.dtype)) * torch.sigmoid(logsnr - bias)
    raise ValueError(f"space must be 'eps' or 'x', got {space!r}")


def _edm_log_weight(logsnr: Tensor, mean: float, std: float, sigma_data: float) -> Tensor:
    """log of the EDM weighting in ε-space: log N(λ; mean, std²) + log((e^(−λ) + σ_d²)/σ_d²) (VDM++ Table 1)."""
    log_density = -0.5 * ((logsnr - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))
    return log_density + torch.logaddexp(-logsnr, torch.full_like(logsnr, 2 * math.log(sigma_data))) - 2 * math.log(
        sigma_data
    )


def _edm_peak(mean: float, std: float, sigma_data: float) -> float:
    """argmax_λ of the EDM ε-weighting (VDM++ Table 1): root of its log-derivative by bisection,
        d/dλ log w = −(λ − mean)/std² − 1/(1 + σ_d²·e^λ),
    since d/dλ log(e^(−λ) + σ_d²) = −e^(−λ)/(e^(−λ) + σ_d²). For the EDM defaults the root is λ ≈ −3.31.
    """
    lo, hi = mean - 20 * std, mean + 20 * std
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        # one sign change for the EDM defaults (unimodal log-weight), so slope > 0 puts the peak to the right
        slope = -(mid - mean) / std**2 - 1.0 / (1.0 + sigma_data**2 * math.exp(mid))
        lo, hi = (mid, hi) if slope > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def edm_monotonic_weight(
    logsnr: Tensor,
    bias: float = 0.0,
    space: ErrorSpace = "eps",
    mean: float = 2.4,
    std: float = 2.4,
    sigma_data: float = 0.5,
) -> Tensor:
    """EDM-monotonic weighting (VDM++ Sec. 5; the SiD2 baseline of Fig. 3 and Fig. 5).

    EDM's ε-space weighting p(λ)·(e^(−λ) + σ_d²)/σ_d², with λ = −2 log σ_EDM ~ N(2.4, 2.4²) from
    EDM's ln σ ~ N(−1.2, 1.2²), made monotonically decreasing in λ by holding it at its peak value for
    λ below the peak. ``bias`` shifts it along λ like the sigmoid's (w(λ − b)); ``space="x"`` returns
    the same loss on x-errors (times exp(λ)), which — unlike the sigmoid — is not monotonic in λ.
    """
    shifted = logsnr - bias
    peak = _edm_peak(mean, std, sigma_data)
    log_w = _edm_log_weight(torch.clamp(shifted, min=peak), mean, std, sigma_data)
    if space == "eps":
        return torch.exp(log_w)
    if space == "x":
        return torch.exp(log_w + logsnr)
    raise ValueError(f"space must be 'eps' or 'x', got {space!r}")


def time_shifted_bias(step: int, bias_start: float, bias_end: float, warmup_steps: int) -> float:
    """SiD2 App. B.1 time-shifted bias b_t = b_start + (b_end − b_start)·min(step/t_b, 1)."""
    if warmup_steps <= 0:
        return float(bias_end)
    return float(bias_start + (bias_end - bias_start) * min(step / warmup_steps, 1.0))
