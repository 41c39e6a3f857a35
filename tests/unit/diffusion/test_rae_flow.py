"""RAE stage-2 process, analytic checks: the dimension-dependent shift (Sec. 4.2), the shifted training-time
laws, the Euler ODE on a point mass (exact velocity) — the default grid lands on the data, the official
replay stops at shift(0.001) — the SDE's last step, and the loss's RNG order."""
from __future__ import annotations

import math

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion import shift_time
from speedrun_diffusion.lightning_modules.diffusion.rae_flow import RAETransport, rae_sample, rae_shift, rae_time_grid
from speedrun_diffusion.lightning_modules.losses.rae_transport import rae_transport_loss


def test_dimension_dependent_shift():
    assert rae_shift((768, 16, 16)) == pytest.approx(math.sqrt(48))
    assert rae_shift((768, 32, 32)) == pytest.approx(math.sqrt(192))
    assert rae_shift(8192) == pytest.approx(math.sqrt(2))
    assert RAETransport().time_shift == pytest.approx(6.928203230275509)
    assert RAETransport(shift=1.0).time_shift == 1.0


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_training_times_follow_the_shifted_law(kind):
    transport = RAETransport(latent_shape=(768, 16, 16), time_dist=kind)
    s = transport.time_shift
    t = transport.time_sampler()(40_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and bool((t >= 0).all() and (t <= shift_time(torch.tensor(0.999), s)).all())
    # P(t ≤ shift(a)) = P(t_raw ≤ a): a/0.999 for uniform, Φ(logit a) for logit-normal(0, 1)
    for a in (0.1, 0.5, 0.9):
        expected = a / 0.999 if kind == "uniform" else 0.5 * (1 + math.erf(math.log(a / (1 - a)) / math.sqrt(2)))
        empirical = (t <= shift_time(torch.tensor(a), s)).float().mean().item()
        assert abs(empirical - expected) < 0.01


def test_logit_normal_is_truncated_at_t_max():
    from speedrun_diffusion.lightning_modules.diffusion import TimeSampler

    sampler = TimeSampler("logit_normal", mean=1.0, std=2.0, t_max=0.9)  # Φ(b) ≈ 0.71: truncation matters
    t = sampler(40_000, generator=torch.Generator().manual_seed(0))
    assert t.max() <= 0.9
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    b = (math.log(0.9 / 0.1) - 1.0) / 2.0
    for a in (0.2, 0.5, 0.8):
        expected = phi((math.log(a / (1 - a)) - 1.0) / 2.0) / phi(b)
        assert abs((t <= a).float().mean().item() - expected) < 0.01
    assert (t > 0.899).float().mean() < 0.01  # no atom at t_max (a plain clamp would put 29 % there)


def test_time_grids():
    s = math.sqrt(48)
    ode = rae_time_grid(50, s)
    assert ode.shape == (51,) and ode.dtype == torch.float64 and ode[0] == 1 and ode[-1] == 0
    official = rae_time_grid(50, s, official=True)
    assert official.shape == (50,) and official.dtype == torch.float32
    assert official[-1].item() == pytest.approx(s * 0.001 / (1 + (s - 1) * 0.001), rel=1e-4)  # ≈ 0.0069, not 0 (float32)
    sde = rae_time_grid(50, s, "sde", last_step_size=0.04)
    assert sde.shape == (51,) and sde[-1] == 0 and sde[-2].item() == pytest.approx(shift_time(torch.tensor(0.04), s).item())
    with pytest.raises(ValueError, match="method"):
        rae_time_grid(50, s, "heun")


def _point_mass(x_star):
    """Exact velocity of the linear flow for data δ(x*): v(x, t) = (x − x*)/t."""
    return lambda x, t: (x - x_star) / t.reshape(-1, *([1] * (x.dim() - 1)))


def test_euler_ode_on_a_point_mass():
    g = torch.Generator().manual_seed(0)
    x_star, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    s = math.sqrt(48)
    # x_{k+1} − x* = (x_k − x*)·t_{k+1}/t_k, so Euler lands on x* exactly when the grid ends at 0
    default = rae_sample(_point_mass(x_star), noise, s, num_steps=10)
    torch.testing.assert_close(default, x_star, atol=1e-5, rtol=0)
    official = rae_sample(_point_mass(x_star), noise, s, num_steps=10, official=True)
    t_end = rae_time_grid(10, s, official=True)[-1].item()
    torch.testing.assert_close(official, x_star + t_end * (noise - x_star), atol=1e-5, rtol=0)
    assert (official - x_star).abs().max() > 1e-3


def test_sde_last_step_time():
    s, seen = math.sqrt(48), []

    def velocity(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    noise = torch.randn(1, 2, 2, 2)
    rae_sample(velocity, noise, s, num_steps=5, method="sde", generator=torch.Generator().manual_seed(0))
    assert len(seen) == 5 and seen[-1] == pytest.approx(shift_time(torch.tensor(0.04), s).item(), rel=1e-6)
    seen.clear()
    rae_sample(velocity, noise, s, num_steps=5, method="sde", official=True, step_noise=torch.zeros(4, 1, 2, 2, 2))
    assert seen[-1] == pytest.approx(0.04)  # the official "Mean" step ignores the shift


def test_loss_draws_noise_then_time_then_dropout():
    calls = []

    def net(x_t, t, y, generator=None):
        calls.append(torch.rand(y.shape, generator=generator))  # stands for the label-dropout draw
        return torch.zeros_like(x_t)

    sampler = RAETransport(latent_shape=(3, 4, 4), time_dist="logit_normal", shift=2.0).time_sampler()
    x0, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    out = rae_transport_loss(net, x0, y, sampler, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(x0.shape, generator=g)
    t = sampler(2, generator=g)
    drop = torch.rand(2, generator=g)
    torch.testing.assert_close(out.noise, noise)
    torch.testing.assert_close(out.t, t)
    torch.testing.assert_close(calls[0], drop)
    torch.testing.assert_close(out.x_t, (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise)
    torch.testing.assert_close(out.loss, (noise - x0).square().flatten(1).mean(1))  # zero prediction
    with pytest.raises(ValueError, match="t must have shape"):
        rae_transport_loss(net, x0, y, sampler, t=torch.rand(3))
