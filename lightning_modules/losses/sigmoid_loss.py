"""The SiD2 training loss: VP diffusion with v-prediction and a λ-weighting (SiD2 eq. 2, eq. 4, App. A.1).

    L(x) = E_{t~U(0,1)} [ −dλ/dt · w(λ_t) · ‖ε − ε̂‖² ]

with z_t = α_t x + σ_t ε (eq. 1), the network predicting v = α ε − σ x (A.4 mean_type = v), and w the
sigmoid weighting σ(b − λ) (SiD2's choice), EDM-monotonic (its baseline), or the Haar power loss.
‖·‖² is averaged over the C·H·W entries (a constant factor against the paper's sum).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion.flow import expand_like
from speedrun_diffusion.lightning_modules.diffusion.loss_weighting import edm_monotonic_weight, sigmoid_weight
from speedrun_diffusion.lightning_modules.diffusion.vp import LogSNRSchedule, alpha_sigma, v_target, vp_interpolate
from speedrun_diffusion.lightning_modules.losses.power_loss import power_loss

__all__ = ["Weighting", "vp_diffusion_loss"]

Weighting = Literal["sigmoid", "edm_monotonic", "power"]


def vp_diffusion_loss(
    net_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    labels: Tensor,
    schedule: LogSNRSchedule,
    weighting: Weighting = "sigmoid",
    bias: float = 0.0,
    power_levels: int = 0,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Batch means of the weighted loss (key ``weighting``) and the unweighted ‖v − v̂‖² (``v_mse``).

    ``net_fn(z, λ, y) -> v̂``. ``t`` (B,) and ``noise`` may be pinned (DESIGN: injectable randomness).
    The ε-error is formed as α·(v − v̂), which equals ε − ε̂ exactly for a v-prediction; the power loss
    uses the x-error x̂ − x = σ·(v − v̂).
    """
    if t is None:
        t = torch.rand(x.shape[0], device=x.device, generator=generator)
    if noise is None:
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    logsnr = schedule(t.float())
    alpha, sigma = alpha_sigma(logsnr)
    z = vp_interpolate(x, noise, alpha, sigma)
    v_err = v_target(x, noise, alpha, sigma).float() - net_fn(z, logsnr, labels).float()
    neg_dlogsnr = -schedule.dlogsnr_dt(t.float())  # cancels the schedule's density over λ (eq. 2)
    v_mse = v_err.pow(2).flatten(1).mean(1)
    if weighting == "power":
        per_sample = power_loss(expand_like(sigma, v_err) * v_err, logsnr, neg_dlogsnr, bias, power_levels)
    else:
        eps_mse = alpha.float() ** 2 * v_mse  # ‖ε − ε̂‖² = α²‖v − v̂‖²
        if weighting == "sigmoid":
            weight = sigmoid_weight(logsnr.float(), bias, space="eps")
        elif weighting == "edm_monotonic":
            weight = edm_monotonic_weight(logsnr.float(), bias, space="eps")
        else:
            raise ValueError(f"unknown weighting {weighting!r}; use 'sigmoid', 'edm_monotonic' or 'power'")
        per_sample = neg_dlogsnr * weight * eps_mse
    return {weighting: per_sample.mean(), "v_mse": v_mse.mean()}
