"""KL term of the ViT-VAE posterior: SpeedDiff eq. 11 on known μ, σ, reductions, gradient, posterior agreement."""
from __future__ import annotations

import math

import pytest
import torch

from speedrun_diffusion.lightning_modules.losses.kl import gaussian_kl, kl_loss
from speedrun_diffusion.lightning_modules.networks.invae import DiagonalGaussian


def test_matches_eq11_on_known_values():
    mu = torch.tensor([[1.0, -2.0], [0.0, 0.5]]).reshape(2, 2, 1, 1)
    sigma = torch.tensor([[0.5, 2.0], [1.0, 3.0]]).reshape(2, 2, 1, 1)
    logvar = torch.log(sigma**2)
    expected = []
    for m, s in zip(mu.flatten(1).tolist(), sigma.flatten(1).tolist()):
        mean_penalty = sum(x**2 for x in m)
        var_penalty = sum(v**2 - math.log(v**2) - 1 for v in s)
        expected.append(0.5 * (mean_penalty + var_penalty))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.tensor(expected))
    torch.testing.assert_close(kl_loss(mu, logvar), torch.tensor(expected).mean())
    torch.testing.assert_close(kl_loss(mu, logvar, reduction="mean"), torch.tensor(expected).mean() / 2)


def test_zero_at_prior_and_agrees_with_posterior():
    z = torch.zeros(3, 4, 2, 2)
    assert kl_loss(z, z).item() == 0.0
    moments = torch.randn(3, 8, 2, 2)
    post = DiagonalGaussian(moments)
    torch.testing.assert_close(gaussian_kl(post.mean, post.logvar), post.kl())


def test_gradient_is_analytic():
    mu = torch.randn(2, 3, requires_grad=True)
    logvar = torch.randn(2, 3, requires_grad=True)
    kl_loss(mu, logvar).backward()
    # d/dμ = μ / B, d/dlogvar = ½(e^logvar − 1) / B for the batch mean of the per-sample sum
    torch.testing.assert_close(mu.grad, mu.detach() / 2)
    torch.testing.assert_close(logvar.grad, 0.5 * (logvar.detach().exp() - 1) / 2)


def test_bad_input():
    with pytest.raises(ValueError, match="differ"):
        gaussian_kl(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="reduction"):
        kl_loss(torch.zeros(1, 2), torch.zeros(1, 2), reduction="max")
