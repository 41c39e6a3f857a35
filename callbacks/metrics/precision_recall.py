"""`PrecisionRecall`: improved precision and recall (Kynkäänniemi et al. 2019), ADM variant.

Implements ADM evaluator ``ManifoldEstimator.manifold_radii`` / ``evaluate_pr`` with the float32
``DistanceBlock`` branch (metrics README §2.6): squared Euclidean distances
max(|u|^2 - 2 u.v + |v|^2, 0); radius of a point = the (k+1)-th smallest distance to its own set
with itself included (k = 3); precision = fraction of fake points within (``<=``) the radius of at
least one real point, recall = the converse. Row/column batch sizes do not change the result.
ADM's default float16 block is not reproduced: it depends on the hardware's float16 accumulation
and sits a few thousandths higher (README §2.6).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

ADM_K = 3  # ManifoldEstimator(nhood_sizes=(3,))
ADM_BATCH = 10_000  # ManifoldEstimator row_batch_size = col_batch_size = 10000


def squared_distances(u: Tensor, v: Tensor) -> Tensor:
    """ADM ``_batch_pairwise_distances``: max(|u|^2 - 2 u v^T + |v|^2, 0) in the inputs' dtype."""
    norm_u = u.square().sum(1, keepdim=True)
    norm_v = v.square().sum(1).unsqueeze(0)
    return torch.clamp(norm_u - 2 * (u @ v.T) + norm_v, min=0)


def manifold_radii(features: Tensor, k: int = ADM_K, row_batch_size: int = ADM_BATCH,
                   col_batch_size: int = ADM_BATCH) -> Tensor:
    """Squared distance of every point to its k-th nearest other point (self included at rank 0)."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set, got {n}")
    radii = []
    for r in range(0, n, row_batch_size):
        rows = features[r:r + row_batch_size]
        # running k+1 smallest per row: the same multiset as a partition of the full row
        best = torch.cat([squared_distances(rows, features[c:c + col_batch_size]).topk(
            min(k + 1, len(features[c:c + col_batch_size])), dim=1, largest=False).values
            for c in range(0, n, col_batch_size)], dim=1)
        radii.append(best.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def precision_recall(real: Tensor, fake: Tensor, k: int = ADM_K, row_batch_size: int = ADM_BATCH,
                     col_batch_size: int = ADM_BATCH) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ADM ``compute_prec_recall(ref=real, sample=fake)`` → (precision, recall, radii_real, radii_fake)."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision/recall needs (N, D) features of equal D, got {tuple(real.shape)}, {tuple(fake.shape)}")
    radii_real = manifold_radii(real, k, row_batch_size, col_batch_size)
    radii_fake = manifold_radii(fake, k, row_batch_size, col_batch_size)
    real_in = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    fake_in = torch.zeros(fake.shape[0], dtype=torch.bool, device=fake.device)
    for r in range(0, real.shape[0], row_batch_size):
        for c in range(0, fake.shape[0], col_batch_size):
            d = squared_distances(real[r:r + row_batch_size], fake[c:c + col_batch_size])
            # one distance block serves both directions, as ADM's DistanceBlock.less_thans
            real_in[r:r + row_batch_size] |= (d <= radii_fake[c:c + col_batch_size].unsqueeze(0)).any(1)
            fake_in[c:c + col_batch_size] |= (d <= radii_real[r:r + row_batch_size].unsqueeze(1)).any(0)
    precision = fake_in.double().mean()
    recall = real_in.double().mean()
    return precision, recall, radii_real, radii_fake


class PrecisionRecall(Metric):
    """ADM improved precision/recall; ``compute()`` returns ``{"precision", "recall"}`` (0-d float64).

    Args:
        k: neighbourhood size (ADM: 3).
        dtype: distance arithmetic, float32 (ADM's fallback branch, torch-fidelity) or float64; both
            give the reference values exactly up to samples on the decision boundary.
        row_batch_size / col_batch_size: distance block size (memory only; no effect on the result).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = ADM_K, dtype: torch.dtype = torch.float32, row_batch_size: int = ADM_BATCH,
                 col_batch_size: int = ADM_BATCH, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"PrecisionRecall computes in float32 or float64, got {dtype}")
        self.k = k
        self.distance_dtype = dtype
        self.row_batch_size = row_batch_size
        self.col_batch_size = col_batch_size
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(self, features: Tensor, real: bool) -> None:
        if features.ndim != 2:
            raise ValueError(f"PrecisionRecall expects (N, D) features, got {tuple(features.shape)}")
        (self.real_features if real else self.fake_features).append(features.detach().float())

    def compute(self) -> dict[str, Tensor]:
        cat = lambda s: torch.cat(s) if isinstance(s, list) else s  # noqa: E731
        real = cat(self.real_features).to(self.distance_dtype)
        fake = cat(self.fake_features).to(self.distance_dtype)
        precision, recall, _, _ = precision_recall(real, fake, self.k, self.row_batch_size, self.col_batch_size)
        return {"precision": precision, "recall": recall}
