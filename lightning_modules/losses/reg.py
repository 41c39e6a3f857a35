"""REG class-token velocity loss (Wu et al. 2025, "Representation Entanglement for Generation", eq. 9;
SR-DiT Sec. 3.5, λ = 0.03).

The REG token is the DINOv2 CLS embedding diffused with the same t as the latent,
cls_t = (1 − t)·cls + t·ε_cls, and its own output head regresses the velocity ε_cls − cls.
L_cls = batch mean of the per-sample mean of (v̂_cls − v_cls)² (official ``loss.py``).
"""
from __future__ import annotations

from torch import Tensor

from speedrun_diffusion.lightning_modules.losses.flow_matching import velocity_mse


def cls_velocity_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Scalar REG loss: mean over the batch of velocity_mse(v̂_cls, ε_cls − cls)."""
    return velocity_mse(prediction, target).mean()


__all__ = ["cls_velocity_loss"]
