"""Contrastive flow matching (Stoica et al. 2025, "ΔFM", eq. 6; SR-DiT Sec. 3.6, λ = 0.05).

L_CFM = −E‖v̂(x_t) − ṽ‖², where ṽ is the velocity target of *another* sample of the batch: the term
pushes predictions away from other samples' flows. The paper draws ṽ by a random shuffle of the batch;
the official SR-DiT code (followed here, reference/srdit/README "Loss") rolls the batch by one —
sample i is contrasted with sample i − 1, sample 0 with the last — so no randomness is drawn. Pass
``negative_index`` (a permutation, e.g. ``torch.randperm(B, generator=g)``) for the paper's shuffle.
"""
from __future__ import annotations

import torch
from torch import Tensor


def contrastive_targets(target: Tensor, negative_index: Tensor | None = None) -> Tensor:
    """The negatives ṽ: ``roll(target, 1, dim=0)`` (official) or ``target[negative_index]``."""
    if negative_index is None:
        return torch.roll(target, shifts=1, dims=0)
    return target[negative_index.to(target.device)]


def contrastive_flow_loss(prediction: Tensor, target: Tensor, negative_index: Tensor | None = None) -> Tensor:
    """Scalar −mean((v̂ − ṽ)²) over all elements (official ``cfm_loss``; negative, so it is minimised
    by moving away from the negatives)."""
    negatives = contrastive_targets(target, negative_index)
    return -(prediction.float() - negatives.float()).pow(2).mean()


__all__ = ["contrastive_flow_loss", "contrastive_targets"]
