"""`KDD`: kernel distance on DINOv2 ViT-L/14 features, as dgm-eval computes it (metrics README §2.7).

Implements dgm-eval ``metrics/mmd.py`` ``compute_mmd`` with its defaults: 100 subsets; in each,
s = min(1000, N_real, N_fake) indices drawn without replacement from the real set, then from the
fake set, with numpy's legacy RNG (``RandomState(seed).choice``, the draws dgm-eval makes from the
global RNG after ``np.random.seed(seed)``); polynomial kernel k(x, y) = (x.y / D + 1)^3 in float64;
unbiased MMD^2 (KID estimator: within-set sums without the diagonal over s(s-1), minus twice the
full cross sum over s^2). KD = mean over subsets, reported unscaled (SR-DiT's "KDD 0.319" is this
raw value); ``kd_std`` is the population std dgm-eval prints as "kd_variance".

A set with more than 50,000 features is sub-sampled once (dgm-eval: ``np.random.seed(13579)``,
sorted indices) before the subsets are drawn.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

DGM_NUM_SUBSETS = 100  # compute_mmd(n_subsets=100)
DGM_SUBSET_SIZE = 1000  # compute_mmd(subset_size=1000)
DGM_DEGREE = 3  # polynomial_mmd(degree=3, gamma=None -> 1/D, coef0=1)
DGM_COEF0 = 1.0
DGM_MAX_SAMPLES = 50_000  # dgm-eval keeps at most 50,000 representations per set
DGM_SUBSAMPLE_SEED = 13579  # ... chosen with np.random.seed(13579)
GRAM_LIMIT = 1 << 26  # up to 64M float64 entries (512 MB) one kernel matrix of all points beats per-subset products


def polynomial_mmd(x: Tensor, y: Tensor, degree: int = DGM_DEGREE, gamma: float | None = None,
                   coef0: float = DGM_COEF0) -> Tensor:
    """Unbiased MMD^2 with k(a, b) = (gamma a.b + coef0)^degree, gamma = 1/D by default (float64).

    dgm-eval / KID ``polynomial_mmd`` → ``_mmd2_and_variance(mmd_est="unbiased")``; the cross term keeps
    its diagonal. Both sets must have the same size m.
    """
    x, y = x.double(), y.double()
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"polynomial_mmd needs two sets of equal size >= 2, got {x.shape[0]} and {y.shape[0]}")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (g * (x @ x.T) + coef0) ** degree
    k_yy = (g * (y @ y.T) + coef0) ** degree
    k_xy = (g * (x @ y.T) + coef0) ** degree
    within = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def _mmd_from_kernel(kernel: Tensor, idx_x: Tensor, idx_y: Tensor) -> Tensor:
    """Unbiased MMD^2 of every subset pair from the kernel matrix of all points, (S,) float64.

    With 0/1 membership vectors u, v of a subset pair (no repeats: drawn without replacement), the
    kernel sums of `polynomial_mmd` are u^T K u, v^T K v and u^T K v; all subsets in one product.
    """
    n, m = kernel.shape[0], idx_x.shape[1]
    u = torch.zeros(idx_x.shape[0], n, dtype=kernel.dtype, device=kernel.device).scatter_(1, idx_x, 1.0)
    v = torch.zeros_like(u).scatter_(1, idx_y, 1.0)
    ku, kv = u @ kernel, v @ kernel
    diag = kernel.diagonal()
    within = (ku * u).sum(1) - diag[idx_x].sum(1) + (kv * v).sum(1) - diag[idx_y].sum(1)
    return within / (m * (m - 1)) - 2 * (ku * v).sum(1) / (m * m)


def dgm_subset_indices(n_real: int, n_fake: int, num_subsets: int = DGM_NUM_SUBSETS,
                       subset_size: int = DGM_SUBSET_SIZE, seed: int = DGM_SUBSAMPLE_SEED) -> tuple[Tensor, Tensor]:
    """The (num_subsets, s) subset indices dgm-eval draws after ``np.random.seed(seed)`` (real, fake, real, ...)."""
    s = min(subset_size, n_real, n_fake)
    rng = np.random.RandomState(seed)
    real, fake = [], []
    for _ in range(num_subsets):
        real.append(rng.choice(n_real, s, replace=False))
        fake.append(rng.choice(n_fake, s, replace=False))
    return torch.from_numpy(np.stack(real)), torch.from_numpy(np.stack(fake))


def dgm_subsample(features: Tensor, max_samples: int = DGM_MAX_SAMPLES, seed: int = DGM_SUBSAMPLE_SEED) -> Tensor:
    """At most ``max_samples`` rows: dgm-eval's one-off seeded choice without replacement, kept in sorted order."""
    n = features.shape[0]
    if n <= max_samples:
        return features
    keep = np.sort(np.random.RandomState(seed).choice(n, max_samples, replace=False))
    return features[torch.from_numpy(keep).to(features.device)]


def kernel_distance(real: Tensor, fake: Tensor, subset_indices: tuple[Tensor, Tensor] | None = None,
                    num_subsets: int = DGM_NUM_SUBSETS, subset_size: int = DGM_SUBSET_SIZE,
                    seed: int = DGM_SUBSAMPLE_SEED, degree: int = DGM_DEGREE, gamma: float | None = None,
                    coef0: float = DGM_COEF0) -> dict[str, Tensor]:
    """dgm-eval ``compute_mmd``: ``{"kd_value", "kd_std", "mmd_per_subset"}`` (float64).

    ``subset_indices`` = (real, fake) index tensors of shape (num_subsets, s) overrides the seeded draw.
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"KDD needs (N, D) features of equal D, got {tuple(real.shape)}, {tuple(fake.shape)}")
    real, fake = real.double(), fake.double()
    if subset_indices is None:
        subset_indices = dgm_subset_indices(real.shape[0], fake.shape[0], num_subsets, subset_size, seed)
    idx_real, idx_fake = (torch.as_tensor(i).long().to(real.device) for i in subset_indices)
    if idx_real.shape != idx_fake.shape or idx_real.ndim != 2:
        raise ValueError(f"subset indices must be two (num_subsets, s) tensors, got {tuple(idx_real.shape)}, "
                         f"{tuple(idx_fake.shape)}")
    g = 1.0 / real.shape[1] if gamma is None else gamma
    n_real = real.shape[0]
    if (n_real + fake.shape[0]) ** 2 <= GRAM_LIMIT:
        # small sets: kernel of everything once, subsets as membership vectors (same sums, far fewer flops)
        both = torch.cat([real, fake])
        mmds = _mmd_from_kernel((g * (both @ both.T) + coef0) ** degree, idx_real, idx_fake + n_real)
    else:
        mmds = torch.stack([polynomial_mmd(real[ir], fake[jf], degree, g, coef0) for ir, jf in zip(idx_real, idx_fake)])
    return {"kd_value": mmds.mean(), "kd_std": mmds.std(unbiased=False), "mmd_per_subset": mmds}


class KDD(Metric):
    """dgm-eval kernel distance (KDD) on DINOv2 features; ``compute()`` → ``kd_value`` (0-d float64).

    Args:
        num_subsets / subset_size / seed: dgm-eval's subset draw (``seed`` seeds numpy's legacy RNG).
        subset_indices: optional fixed (real, fake) subset index tensors (then num_subsets/seed are unused).
        max_samples: sets larger than this are sub-sampled once (dgm-eval: 50,000).

    ``kd_std`` holds the population std of the last compute. Order matters (subsets index the
    concatenated features), so ``update`` can take global sample indices to restore it after gathering.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_subsets: int = DGM_NUM_SUBSETS, subset_size: int = DGM_SUBSET_SIZE,
                 seed: int = DGM_SUBSAMPLE_SEED, subset_indices: tuple[Tensor, Tensor] | None = None,
                 max_samples: int = DGM_MAX_SAMPLES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_subsets = num_subsets
        self.subset_size = subset_size
        self.seed = seed
        self.subset_indices = subset_indices
        self.max_samples = max_samples
        for side in ("real", "fake"):
            self.add_state(f"{side}_features", [], dist_reduce_fx="cat")
            self.add_state(f"{side}_indices", [], dist_reduce_fx="cat")
        self.kd_std: Tensor | None = None

    def update(self, features: Tensor, real: bool, indices: Tensor | None = None) -> None:
        if features.ndim != 2:
            raise ValueError(f"KDD expects (N, D) features, got {tuple(features.shape)}")
        side = "real" if real else "fake"
        # dgm-eval keeps float64 copies of the encoder's float32 output
        getattr(self, f"{side}_features").append(features.detach().double())
        if indices is not None:
            getattr(self, f"{side}_indices").append(indices.detach().to(device=features.device, dtype=torch.float64))

    def _ordered(self, side: str) -> Tensor:
        feats, idx = getattr(self, f"{side}_features"), getattr(self, f"{side}_indices")
        feats = torch.cat(feats) if isinstance(feats, list) else feats
        idx = (torch.cat(idx) if idx else None) if isinstance(idx, list) else idx
        if idx is not None and idx.numel() > 0:
            if idx.numel() != feats.shape[0]:
                raise RuntimeError("KDD: give indices with every update of a side or with none")
            feats = feats[torch.argsort(idx)]
        return dgm_subsample(feats, self.max_samples)

    def compute(self) -> Tensor:
        out = kernel_distance(self._ordered("real"), self._ordered("fake"), self.subset_indices, self.num_subsets,
                              self.subset_size, self.seed)
        self.kd_std = out["kd_std"]
        return out["kd_value"]
