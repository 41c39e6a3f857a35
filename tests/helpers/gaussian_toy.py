"""Gaussian toy data with closed-form denoisers, and a Monte-Carlo moment check.

Data x0 ~ N(μ, Σ) in d = 3 with a full (non-diagonal) Σ. Every conditional expectation a sampler
needs is Gaussian conditioning:

* linear flow x_t = (1 − t)·x0 + t·ε: x_t ~ N((1 − t)μ, C_t), C_t = (1 − t)²Σ + t²I,
  E[x0|x_t] = μ + (1 − t)Σ C_t⁻¹ (x_t − (1 − t)μ), E[ε|x_t] = t C_t⁻¹ (x_t − (1 − t)μ),
  exact velocity v = E[ε|x_t] − E[x0|x_t];
* VP z = αx + σε: E[x|z] = μ + αΣ (α²Σ + σ²I)⁻¹ (z − αμ).
"""
from __future__ import annotations

import torch
from torch import Tensor

MU = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
_L = torch.tensor([[0.8, 0.0, 0.0], [0.3, 0.6, 0.0], [-0.2, 0.25, 0.5]], dtype=torch.float64)
SIGMA = _L @ _L.T  # eigenvalues ≈ 0.15 … 1.0, clearly correlated
EYE = torch.eye(3, dtype=torch.float64)


def _common_t(t: Tensor) -> float:
    """Samplers call the denoiser with one time for the whole batch, shape (B,)."""
    assert t.ndim == 1, "t must have shape (B,)"
    assert torch.all(t == t[0]), "one time per sampler step"
    return float(t[0])


def flow_posterior(x: Tensor, t: float, mu: Tensor = MU, sigma: Tensor = SIGMA) -> tuple[Tensor, Tensor]:
    """(E[x0|x_t], E[ε|x_t]) for x (B, d) at the common time t (float64 arithmetic)."""
    x64 = x.double()
    cov = (1 - t) ** 2 * sigma + t**2 * EYE
    resid = torch.linalg.solve(cov, (x64 - (1 - t) * mu).T).T  # C_t⁻¹ (x − (1 − t)μ)
    return mu + (1 - t) * resid @ sigma.T, t * resid


def flow_velocity(x: Tensor, t: Tensor) -> Tensor:
    """Exact velocity E[ε − x0 | x_t] as a sampler velocity_fn (x (B, d), t (B,))."""
    x0, eps = flow_posterior(x, _common_t(t))
    return (eps - x0).to(x.dtype)


def vp_x_posterior(z: Tensor, alpha: float, sigma_: float, mu: Tensor = MU, sigma: Tensor = SIGMA) -> Tensor:
    """E[x|z] for z = αx + σε."""
    cov = alpha**2 * sigma + sigma_**2 * EYE
    resid = torch.linalg.solve(cov, (z.double() - alpha * mu).T).T
    return mu + alpha * resid @ sigma.T


def moment_zscores(samples: Tensor, mean: Tensor, cov: Tensor) -> tuple[Tensor, Tensor]:
    """|sample moment − target| in units of its Monte-Carlo standard error (Gaussian formulas).

    SE(mean_i) = √(Σ_ii/n); SE(cov_ij) = √((Σ_ii Σ_jj + Σ_ij²)/n) for the sample covariance.
    """
    x = samples.double()
    n = x.shape[0]
    m = x.mean(0)
    c = torch.cov(x.T)
    var = torch.diagonal(cov)
    z_mean = (m - mean).abs() / torch.sqrt(var / n)
    z_cov = (c - cov).abs() / torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    return z_mean, z_cov


def assert_moments(samples: Tensor, mean: Tensor, cov: Tensor, n_se: float = 5.0) -> float:
    """Mean and covariance within n_se standard errors, elementwise; returns the largest z-score."""
    z_mean, z_cov = moment_zscores(samples, mean, cov)
    worst = max(float(z_mean.max()), float(z_cov.max()))
    assert worst <= n_se, (
        f"moments off by {worst:.1f} SE (mean z {z_mean.tolist()}, cov z {z_cov.tolist()}; "
        f"sample mean {samples.double().mean(0).tolist()}, cov {torch.cov(samples.double().T).tolist()})"
    )
    return worst


def gaussian_noise(n: int, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def linear_law(run, num_noise_steps: int, dim: int = 3) -> tuple[Tensor, Tensor]:
    """Exact output law N(c, K) of a sampler that is affine in its Gaussian inputs.

    With Gaussian data the exact denoisers are affine in the state, so every sampler here maps
    (initial noise, step noises) affinely to its output: out = c + M·noise + Σ_i K_i·ε_i. Rows of
    one batch are independent, so one call ``run(noise, step_noise)`` on a batch holding the zero
    input, the unit initial noises e_j and, for every step i, the unit step noises e_j gives c and
    every column; the output covariance is then Σ over those columns of col·colᵀ — no Monte-Carlo.
    """
    rows = 1 + dim + dim * num_noise_steps
    eye = torch.eye(dim, dtype=torch.float64)
    noise = torch.zeros(rows, dim, dtype=torch.float64)
    noise[1 : 1 + dim] = eye
    steps = torch.zeros(num_noise_steps, rows, dim, dtype=torch.float64)
    for i in range(num_noise_steps):
        start = 1 + dim + dim * i
        steps[i, start : start + dim] = eye
    out = run(noise, steps).double()
    columns = out[1:] - out[0]
    return out[0], columns.T @ columns


def max_errors(
    mean: Tensor, cov: Tensor, target_mean: Tensor = MU, target_cov: Tensor = SIGMA
) -> tuple[float, float]:
    """Largest absolute deviation of the mean and of the covariance from the target."""
    return float((mean - target_mean).abs().max()), float((cov - target_cov).abs().max())
