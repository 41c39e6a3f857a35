"""Tweedie pixel reconstruction (TPR) loss (SpeedDiff supp. A.2.4, eqs. 9–10, Algorithm 1).

From the interpolant z_t = (1 − t)·z0 + t·ε and the predicted velocity v̂ = V_θ(z_t, t) ≈ ε − z0, the
one-step clean estimate is

    z_tweedie = z_t − t·v̂                         (eq. 9,  = E[z0 | z_t] for the exact velocity)
    x̂_tpr     = D_ψ(z_tweedie)                    (eq. 10)
    L_TPR     = w_mse·MSE(x̂_tpr, x0) + w_lpips·LPIPS(x̂_tpr, x0)      (Tab. 14: both weights 1)

Nothing is detached: the loss reaches the decoder ψ, the denoiser θ (through v̂) and the encoder φ
(through z_t and z0), Algorithm 1's L_TPR(·; φ, ψ, θ).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor


def tweedie_latent(z_t: Tensor, t: Tensor, velocity: Tensor) -> Tensor:
    """z_t − t·v̂ (eq. 9); ``t`` is (B,) or a scalar and broadcasts over the latent dimensions."""
    if t.dim() == 1:
        t = t.reshape(-1, *([1] * (z_t.dim() - 1)))
    return z_t - t.to(z_t.dtype) * velocity


def tpr_loss(
    decoder: Callable[[Tensor], Tensor],
    z_t: Tensor,
    t: Tensor,
    velocity: Tensor,
    x0: Tensor,
    lpips: Callable[[Tensor, Tensor], Tensor] | None = None,
    mse_weight: float = 1.0,
    lpips_weight: float = 1.0,
) -> dict[str, Tensor]:
    """{"tpr": weighted sum, "tpr_mse", "tpr_lpips"} for x̂_tpr = decoder(z_t − t·v̂) against images x0.

    ``lpips(x̂, x0)`` is any perceptual distance (per-sample or scalar; its mean is taken); without it, or
    with ``lpips_weight`` 0, the LPIPS term is left out. With both weights 0 the branch is disabled: the
    decoder is not run and ``{}`` is returned, so no gradient flows through TPR.
    """
    use_lpips = lpips is not None and lpips_weight != 0.0
    if mse_weight == 0.0 and not use_lpips:
        return {}
    x_hat = decoder(tweedie_latent(z_t, t, velocity))
    if x_hat.shape != x0.shape:
        raise ValueError(f"decoded TPR images {tuple(x_hat.shape)} do not match x0 {tuple(x0.shape)}")
    terms = {"tpr_mse": (x_hat.float() - x0.float()).square().mean()}
    total = mse_weight * terms["tpr_mse"]
    if use_lpips:
        terms["tpr_lpips"] = lpips(x_hat, x0).float().mean()
        total = total + lpips_weight * terms["tpr_lpips"]
    return {"tpr": total, **terms}


__all__ = ["tpr_loss", "tweedie_latent"]
