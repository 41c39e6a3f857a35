"""SiD2 loss weightings (Sec. 2.1, eq. 4, App. B.1, Fig. 3): hand-computed values, the ε/x identity,
per-resolution bias, time-shifted bias, EDM-monotonic shape and its peak (dense-grid argmax)."""
from __future__ import annotations

import math

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion.loss_weighting import (
    _edm_peak,
    edm_monotonic_weight,
    sid2_loss_bias,
    sigmoid_weight,
    time_shifted_bias,
)
from speedrun_diffusion.lightning_modules.diffusion.vp import LogSNRSchedule, alpha_sigma, eps_from_x, vp_interpolate


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(
    "lam, b, eps_w, x_w",
    [
        (0.0, 0.0, 0.5, 0.5),
        # σ(−3 − 2) = 1/(1 + e⁵) and e^(−3)·σ(5), by hand
        (2.0, -3.0, 1 / (1 + math.e**5), math.e**-3 / (1 + math.e**-5)),
        (-4.0, -1.0, 1 / (1 + math.e**-3), math.e**-1 / (1 + math.e**3)),
    ],
)
def test_sigmoid_weight_hand_values(lam: float, b: float, eps_w: float, x_w: float):
    lam_t = torch.tensor([lam], dtype=torch.float64)
    assert sigmoid_weight(lam_t, b, "eps").item() == pytest.approx(eps_w, rel=1e-12)
    assert sigmoid_weight(lam_t, b, "x").item() == pytest.approx(x_w, rel=1e-12)
    assert eps_w == pytest.approx(_sig(b - lam)) and x_w == pytest.approx(math.exp(b) * _sig(lam - b))


@pytest.mark.parametrize("b", [0.0, -1.0, -3.0, 2.0])
def test_eps_and_x_forms_are_the_same_loss(b: float):
    # −dλ/dt·σ(b − λ)·‖ε − ε̂‖² == −dλ/dt·exp(b)σ(λ − b)·‖x − x̂‖² for any prediction (SiD2 eq. 4)
    g = torch.Generator().manual_seed(0)
    schedule = LogSNRSchedule("interpolated_cosine", image_size=256)
    t = torch.rand(64, generator=g, dtype=torch.float64)
    lam = schedule(t)
    alpha, sigma = alpha_sigma(lam)
    x, eps = torch.randn(64, 12, generator=g, dtype=torch.float64), torch.randn(64, 12, generator=g, dtype=torch.float64)
    z = vp_interpolate(x, eps, alpha, sigma)
    x_hat = x + 0.3 * torch.randn(64, 12, generator=g, dtype=torch.float64)
    eps_hat = eps_from_x(z, x_hat, alpha, sigma)
    d = -schedule.dlogsnr_dt(t)
    eps_loss = d * sigmoid_weight(lam, b, "eps") * (eps - eps_hat).pow(2).sum(1)
    x_loss = d * sigmoid_weight(lam, b, "x") * (x - x_hat).pow(2).sum(1)
    torch.testing.assert_close(eps_loss, x_loss, rtol=1e-9, atol=0)


def test_sigmoid_x_form_increases_and_eps_form_decreases_in_logsnr():
    lam = torch.linspace(-20, 20, 401, dtype=torch.float64)
    assert (sigmoid_weight(lam, -3.0, "x").diff() > 0).all()
    assert (sigmoid_weight(lam, -3.0, "eps").diff() < 0).all()


def test_per_resolution_bias():
    assert [sid2_loss_bias(r) for r in (128, 256, 512)] == [0.0, -1.0, -3.0]  # App. A.4
    assert sid2_loss_bias(64) == pytest.approx(2 * math.log(2))  # Sec. 2.1 shift, extrapolated


def test_time_shifted_bias_warmup():
    # App. B.1: b_t = b_start + (b_end − b_start)·min(t/t_b, 1)
    assert time_shifted_bias(0, -8.0, -3.0, 100_000) == -8.0
    assert time_shifted_bias(50_000, -8.0, -3.0, 100_000) == pytest.approx(-5.5)
    assert time_shifted_bias(100_000, -8.0, -3.0, 100_000) == -3.0
    assert time_shifted_bias(300_000, -8.0, -3.0, 100_000) == -3.0
    assert time_shifted_bias(10, -8.0, -3.0, 0) == -3.0


def _edm_by_hand(lam: torch.Tensor) -> torch.Tensor:
    """EDM ε-weighting N(λ; 2.4, 2.4²)·(e^(−λ) + σ_d²)/σ_d², σ_d = 0.5 (VDM++ Table 1), written out."""
    return torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi)) * (torch.exp(-lam) + 0.25) / 0.25


def test_edm_monotonic_peak_is_the_dense_grid_argmax():
    # the hold starts at argmax_λ of the EDM weighting (VDM++ "EDM monotonic"), λ* ≈ −3.31 for the defaults
    lam = torch.linspace(-20, 20, 400_001, dtype=torch.float64)  # spacing 1e-4
    edm = _edm_by_hand(lam)
    i_star = int(edm.argmax())
    lam_star, w_star = float(lam[i_star]), float(edm[i_star])
    assert lam_star == pytest.approx(-3.31, abs=0.01)
    assert _edm_peak(2.4, 2.4, 0.5) == pytest.approx(lam_star, abs=2e-4)
    w = edm_monotonic_weight(lam)
    # held at the weighting's maximum left of the peak, and equal to the weighting right of it
    torch.testing.assert_close(w[: i_star - 1], torch.full_like(w[: i_star - 1], w_star), rtol=1e-7, atol=0)
    torch.testing.assert_close(w[i_star + 2 :], edm[i_star + 2 :], rtol=1e-10, atol=0)


def test_edm_monotonic_weight_decreases_on_minus_20_to_20():
    lam = torch.linspace(-20, 20, 40_001, dtype=torch.float64)
    w = edm_monotonic_weight(lam)
    assert (w.diff() <= 0).all()  # monotonically decreasing in ε-space (VDM++)
    assert (w.diff() < 0).sum() > 0.5 * len(lam)  # strictly falling right of λ* ≈ −3.31 (58 % of the grid)


def test_edm_monotonic_weight():
    lam = torch.linspace(-15, 15, 3001, dtype=torch.float64)
    # right of the peak it is EDM's N(λ; 2.4, 2.4²)·(e^(−λ) + 0.25)/0.25
    lam0 = 6.0
    by_hand = math.exp(-0.5 * ((lam0 - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi)) * (math.exp(-lam0) + 0.25) / 0.25
    assert edm_monotonic_weight(torch.tensor([lam0], dtype=torch.float64)).item() == pytest.approx(by_hand, rel=1e-10)
    # x-space form is not monotonic (SiD2 Fig. 3b): it rises then falls
    wx = edm_monotonic_weight(lam, space="x")
    assert (wx.diff() > 0).any() and (wx.diff() < 0).any()
    # a bias shifts it along λ like the sigmoid's
    torch.testing.assert_close(edm_monotonic_weight(lam, bias=-3.0), edm_monotonic_weight(lam + 3.0))
