"""KL regulariser of the ViT-VAE posterior (SpeedDiff supp. A.2.2 "Variational Objective", B.3 eq. 11).

    D_KL(N(μ, σ²I) ‖ N(0, I)) = ½ [ Σ_i μ_i²  +  Σ_i (σ_i² − log σ_i² − 1) ]      (eq. 11)

Normalisation: the sum runs over every latent entry of an image (d = 32 channels × 16 × 16 tokens) and
the loss is its batch mean — the LDM / REPA-E ``AutoencoderKL`` convention SpeedDiff's VAE training builds
on (the paper gives no other). Its weight, 1e-5 (A.2.6, Tab. 14), is applied by the recipe; with it
the mean log-variance settles near −6.9 (Tab. 11), with weight 0 it drifts to −123 (an AE).
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor

# SpeedDiff A.2.6 / Tab. 14 "KL weight".
KL_WEIGHT = 1e-5


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Per-sample eq. 11, shape (B,): ½ Σ (μ² + σ² − log σ² − 1) over all non-batch dimensions."""
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ")
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - logvar - 1.0).flatten(1).sum(1)


def kl_loss(mean: Tensor, logvar: Tensor, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    """Scalar KL term: batch mean of eq. 11 summed per image (``"sum"``, LDM convention) or averaged per
    latent entry (``"mean"``, i.e. divided by d·h·w)."""
    per_sample = gaussian_kl(mean, logvar)
    if reduction == "sum":
        return per_sample.mean()
    if reduction == "mean":
        return per_sample.mean() / mean[0].numel()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


__all__ = ["KL_WEIGHT", "gaussian_kl", "kl_loss"]
