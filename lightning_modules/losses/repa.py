"""REPA representation-alignment loss (Yu et al. 2025, "REPA", eq. 8; SR-DiT Sec. 3.5, λ = 0.5).

L_REPA = −(1/N) Σ_n sim(y_n, h_φ(h_n)) with sim the cosine similarity between the frozen encoder's
token features y (DINOv2 [cls; patches]) and the projected hidden states h_φ(h). As in the official
SR-DiT ``loss.py`` (reference/srdit/README "Loss"): mean over all T tokens (cls slot included), then
over the batch, then over the encoders.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def negative_cosine(projection: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean over tokens of −cos(target, projection), shape (B,); inputs (B, T, z)."""
    if projection.shape != target.shape:
        raise ValueError(f"projection {tuple(projection.shape)} and target {tuple(target.shape)} differ")
    # F.normalize (eps 1e-12), like the official code, so a zero vector gives 0 not NaN
    cos = (F.normalize(projection.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1)
    return -cos.mean(dim=1)


def repa_loss(projections: Sequence[Tensor] | Tensor, targets: Sequence[Tensor] | Tensor) -> Tensor:
    """Scalar: mean over encoders and samples of the per-sample token-mean negative cosine similarity."""
    projections = [projections] if isinstance(projections, Tensor) else list(projections)
    targets = [targets] if isinstance(targets, Tensor) else list(targets)
    if len(projections) != len(targets) or not projections:
        raise ValueError(f"{len(projections)} projections for {len(targets)} encoder targets")
    return sum(negative_cosine(z_hat, z).mean() for z_hat, z in zip(projections, targets)) / len(targets)


__all__ = ["negative_cosine", "repa_loss"]
