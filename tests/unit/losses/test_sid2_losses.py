"""SiD2 losses: orthonormal Haar sub-bands (App. A.1), the power loss against the sigmoid loss, and the VP
v-prediction loss against a direct computation of SiD2 eq. 2 with the sigmoid weighting."""
from __future__ import annotations

import math

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion.vp import LogSNRSchedule, alpha_sigma, eps_from_v, vp_interpolate
from speedrun_diffusion.lightning_modules.losses.power_loss import haar_1d, haar_subbands, power_loss
from speedrun_diffusion.lightning_modules.losses.sigmoid_loss import vp_diffusion_loss


@pytest.mark.parametrize("levels", [0, 1, 2, 3])
def test_haar_preserves_squared_norm(levels: int):
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    bands = haar_subbands(x, levels)
    assert len(bands) == 1 + 3 * levels
    total = sum(b.pow(2).sum() for b, _ in bands)
    torch.testing.assert_close(total, x.pow(2).sum(), rtol=1e-12, atol=0)


def test_haar_subband_layout_of_a1():
    # 512² image, two steps: LLLL, LLLH, LLHL, LLHH at 128², then LH, HL, HH at 256² (SiD2 App. A.1)
    bands = haar_subbands(torch.zeros(1, 1, 512, 512), 2)
    assert [p for _, p in bands] == [4, 3, 3, 2, 1, 1, 0]
    assert [b.shape[-1] for b, _ in bands] == [128] * 4 + [256] * 3


def test_haar_step_by_hand():
    s, d = haar_1d(torch.tensor([[1.0, 3.0, 2.0, -2.0]]), -1)
    torch.testing.assert_close(s, torch.tensor([[4.0, 0.0]]) / math.sqrt(2))
    torch.testing.assert_close(d, torch.tensor([[-2.0, 4.0]]) / math.sqrt(2))
    ll = haar_subbands(torch.ones(1, 1, 4, 4), 1)[0][0]  # a constant image is all in LL, scaled by 2
    torch.testing.assert_close(ll, torch.full((1, 1, 2, 2), 2.0))


def _fixed(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    return x, torch.randint(0, 3, (4,), generator=g), torch.rand(4, generator=g), torch.randn(4, 3, 8, 8, generator=g)


class LinearV(torch.nn.Module):
    """A fixed v̂ = a·z + b·λ stand-in for the network."""

    def forward(self, z, logsnr, y):
        return 0.7 * z + 0.05 * logsnr[:, None, None, None]


def test_sigmoid_loss_matches_eq2_by_hand():
    x, y, t, noise = _fixed()
    schedule = LogSNRSchedule("interpolated_cosine", image_size=8)
    out = vp_diffusion_loss(LinearV(), x, y, schedule, "sigmoid", bias=-1.0, t=t, noise=noise)
    lam = schedule(t)
    alpha, sigma = alpha_sigma(lam)
    z = vp_interpolate(x, noise, alpha, sigma)
    eps_hat = eps_from_v(z, LinearV()(z, lam, y), alpha, sigma)
    by_hand = -schedule.dlogsnr_dt(t) * torch.sigmoid(-1.0 - lam) * (noise - eps_hat).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(out["sigmoid"], by_hand.mean(), rtol=1e-4, atol=1e-7)


def test_power_loss_without_levels_is_the_sigmoid_loss_times_exp_minus_b():
    x, y, t, noise = _fixed(1)
    schedule = LogSNRSchedule("interpolated_cosine", image_size=8)
    for b in (0.0, -3.0):
        sig = vp_diffusion_loss(LinearV(), x, y, schedule, "sigmoid", bias=b, t=t, noise=noise)["sigmoid"]
        pw = vp_diffusion_loss(LinearV(), x, y, schedule, "power", bias=b, power_levels=0, t=t, noise=noise)["power"]
        torch.testing.assert_close(pw, math.exp(-b) * sig, rtol=1e-4, atol=0)


def test_power_loss_levels_weight_low_bands_more():
    lam, d = torch.zeros(1), torch.ones(1)
    smooth = torch.ones(1, 1, 8, 8)  # all energy in the LL…L band: l = 2·levels low passes
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]).remainder(2).float().mul(2).sub(1)[None, None]
    for levels in (1, 2):
        hi = power_loss(checker, lam, d, 0.0, levels)  # all energy in HH: l = 0
        lo = power_loss(smooth, lam, d, 0.0, levels)
        assert hi.item() == pytest.approx(0.5)  # σ(0 + 0)·‖I‖²/D
        assert lo.item() == pytest.approx(torch.sigmoid(torch.tensor(2 * levels * math.log(2))).item())


def test_unknown_weighting_is_rejected():
    x, y, t, noise = _fixed()
    with pytest.raises(ValueError, match="unknown weighting"):
        vp_diffusion_loss(LinearV(), x, y, LogSNRSchedule(), "ddpm", t=t, noise=noise)
