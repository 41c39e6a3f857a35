"""`FID`: Fréchet distance between Inception pool_3 feature distributions (ADM evaluator rules).

Implements ADM evaluator ``Evaluator.compute_statistics`` + ``FIDStatistics.frechet_distance``
(guided-diffusion ``evaluations/evaluator.py``; metrics README §2.3):

    FID = |mu_f - mu_r|^2 + tr(S_f) + tr(S_r) - 2 tr(sqrtm(S_f S_r)),

S = sample covariance in float64 with 1/(N - 1); sqrtm = scipy's matrix square root of the
(non-symmetric) product; if it has a non-finite entry, retry with 1e-6 added to both diagonals; if it
is complex, raise when a diagonal imaginary part exceeds 1e-3, else keep the real part.

The metric state is (N, sum x, sum x x^T) per set in float64, reduced by summation over ranks, so
any split of the features over ``update`` calls and processes gives the same statistics. The
reference side can instead be fixed statistics (``mu``/``sigma`` of an ADM reference ``.npz``), used
as stored and never recomputed from ``arr_0`` (README §2.1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

FD_EPS = 1e-6  # ADM frechet_distance(eps=1e-6): diagonal offset of the retry
FD_IMAG_ATOL = 1e-3  # ADM: a complex sqrtm is accepted if every diagonal |imag| <= 1e-3


def frechet_distance(mu1: Tensor | np.ndarray, sigma1: Tensor | np.ndarray, mu2: Tensor | np.ndarray,
                     sigma2: Tensor | np.ndarray, eps: float = FD_EPS) -> Tensor:
    """ADM evaluator ``FIDStatistics.frechet_distance`` in float64 (0-d float64 tensor).

    Order-independent up to rounding; ADM calls it as ``fake.frechet_distance(real)``.
    """
    from scipy import linalg

    m1, m2 = (np.asarray(torch.as_tensor(m).double().cpu()) for m in (mu1, mu2))
    s1, s2 = (np.asarray(torch.as_tensor(s).double().cpu()) for s in (sigma1, sigma2))
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape != (m1.shape[0], m1.shape[0]):
        raise ValueError(f"statistics do not match: mu {m1.shape} vs {m2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = m1 - m2
    covmean = _sqrtm(linalg, s1 @ s2)
    if not np.isfinite(covmean).all():
        # ADM: a singular product; offset both covariances by eps·I and retry
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm(linalg, (s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        worst = np.max(np.abs(np.diagonal(covmean).imag))
        if worst > FD_IMAG_ATOL:
            raise ValueError(f"Fréchet distance: imaginary component {worst:.3g} on the sqrtm diagonal "
                             f"(> {FD_IMAG_ATOL}); the covariances are too ill-conditioned (too few samples?)")
        covmean = covmean.real
    value = diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    return torch.tensor(float(value), dtype=torch.float64)


def _sqrtm(linalg: Any, a: np.ndarray) -> np.ndarray:
    import warnings

    # ADM passes disp=False (no singularity warning); scipy >= 1.16 deprecates disp, so silence it here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def mean_and_covariance(n: Tensor, total: Tensor, outer: Tensor) -> tuple[Tensor, Tensor]:
    """float64 mean and sample covariance (ddof 1) from N, sum x and sum x x^T."""
    count = int(n.item())
    if count < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {count}")
    mu = total / count
    sigma = (outer - count * torch.outer(mu, mu)) / (count - 1)
    return mu, sigma


class FID(Metric):
    """FID (ADM rule) on pre-extracted features: ``update(features, real)``, ``compute() -> float64``.

    Args:
        num_features: feature width D (2048 for Inception pool_3).
        reference: optional fixed reference statistics: an ADM reference ``.npz`` path (keys
            ``mu``/``sigma``, or the ``npz_keys`` given) or a ``(mu, sigma)`` pair. With it, real
            updates are rejected and nothing is recomputed.
        reset_real_features: if False, ``reset()`` keeps the real statistics (reference computed once).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    npz_keys: tuple[str, str] = ("mu", "sigma")

    def __init__(self, num_features: int = 2048, reference: str | Path | tuple[Any, Any] | None = None,
                 reset_real_features: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.reset_real_features = reset_real_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64),
                           dist_reduce_fx="sum")
        self.reference_mu: Tensor | None = None
        self.reference_sigma: Tensor | None = None
        if reference is not None:
            self.set_reference(reference)

    # ------------------------------------------------------------------ reference statistics
    def set_reference(self, reference: str | Path | tuple[Any, Any]) -> None:
        """Fix the real side to stored statistics (ADM ``.npz`` path or ``(mu, sigma)``), used as is."""
        if isinstance(reference, (str, Path)):
            from speedrun_diffusion.callbacks.image_protocol import load_reference_npz

            batch = load_reference_npz(reference, required=self.npz_keys)
            mu, sigma = (getattr(batch, k) for k in self.npz_keys)
        else:
            mu, sigma = reference
        mu = torch.as_tensor(np.asarray(mu)).double().flatten()
        sigma = torch.as_tensor(np.asarray(sigma)).double()
        if mu.shape != (self.num_features,) or sigma.shape != (self.num_features, self.num_features):
            raise ValueError(f"{type(self).__name__}: reference statistics {tuple(mu.shape)} / {tuple(sigma.shape)} "
                             f"do not match num_features={self.num_features}")
        self.reference_mu, self.reference_sigma = mu, sigma

    @property
    def has_fixed_reference(self) -> bool:
        return self.reference_mu is not None

    # ------------------------------------------------------------------ torchmetrics interface
    def update(self, features: Tensor, real: bool) -> None:
        """Accumulate (N, D) features of real (reference) or generated (fake) images."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__} expects (N, {self.num_features}) features, "
                             f"got {tuple(features.shape)}")
        if real and self.has_fixed_reference:
            raise RuntimeError(f"{type(self).__name__} uses fixed reference statistics; real features are not accepted")
        x = features.detach().to(torch.float64)
        side = "real" if real else "fake"
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + x.shape[0])
        getattr(self, f"{side}_sum").add_(x.sum(0))
        getattr(self, f"{side}_outer").add_(x.T @ x)

    def statistics(self, real: bool) -> tuple[Tensor, Tensor]:
        """float64 (mu, sigma) of one side (the stored reference statistics for real, if fixed)."""
        if real and self.has_fixed_reference:
            assert self.reference_mu is not None and self.reference_sigma is not None
            return self.reference_mu, self.reference_sigma
        side = "real" if real else "fake"
        return mean_and_covariance(getattr(self, f"{side}_n"), getattr(self, f"{side}_sum"),
                                   getattr(self, f"{side}_outer"))

    def compute(self) -> Tensor:
        mu_f, sigma_f = self.statistics(real=False)
        mu_r, sigma_r = self.statistics(real=True)
        return frechet_distance(mu_f, sigma_f, mu_r, sigma_r)

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        kept = {k: getattr(self, k).clone() for k in ("real_n", "real_sum", "real_outer")}
        super().reset()
        for k, v in kept.items():
            setattr(self, k, v)
