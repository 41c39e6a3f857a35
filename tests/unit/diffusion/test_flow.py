"""Linear flow matching: interpolant, conversions, time shift and time sampling."""
from __future__ import annotations

import math

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion import (
    TimeSampler,
    dimension_shift,
    expand_like,
    flow_interpolate,
    flow_velocity_target,
    noise_from_velocity,
    shift_time,
    x0_from_velocity,
)


def test_expand_like_broadcasts_per_sample() -> None:
    x = torch.zeros(4, 3, 2, 2)
    t = torch.arange(4.0)
    assert expand_like(t, x).shape == (4, 1, 1, 1)
    assert expand_like(torch.tensor(0.5), x).shape == ()
    assert expand_like(t, torch.zeros(4)).shape == (4,)
    with pytest.raises(ValueError):
        expand_like(torch.arange(3.0), x)


def test_interpolant_endpoints_and_velocity() -> None:
    x0, eps = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    t = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.9])
    x_t = flow_interpolate(x0, eps, t)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], eps[1])
    torch.testing.assert_close(x_t[2], 0.75 * x0[2] + 0.25 * eps[2])
    v = flow_velocity_target(x0, eps)
    torch.testing.assert_close(v, eps - x0)
    # v is the time derivative of the interpolant
    h = 1e-3
    x0d, epsd, td = x0.double(), eps.double(), t.double()
    deriv = (flow_interpolate(x0d, epsd, td + h) - flow_interpolate(x0d, epsd, td - h)) / (2 * h)
    torch.testing.assert_close(deriv, v.double())


def test_velocity_conversions_round_trip() -> None:
    x0, eps = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(6, 2, 3, dtype=torch.float64)
    t = torch.rand(6, dtype=torch.float64)
    x_t = flow_interpolate(x0, eps, t)
    v = flow_velocity_target(x0, eps)
    torch.testing.assert_close(x0_from_velocity(x_t, v, t), x0)
    torch.testing.assert_close(noise_from_velocity(x_t, v, t), eps)


def test_shift_formula_and_fixed_points() -> None:
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = 3.0
    torch.testing.assert_close(shift_time(t, s), s * t / (1 + (s - 1) * t))
    assert shift_time(t, s)[0] == 0.0 and shift_time(t, s)[-1] == 1.0
    assert torch.equal(shift_time(t, 1.0), t)
    assert bool((shift_time(t[1:-1], s) > t[1:-1]).all())  # s > 1 moves t towards noise
    # clamped to [0, 1]; composition s1 then s2 equals s1·s2
    assert float(shift_time(torch.tensor([1.5]), 2.0).max()) <= 1.0
    torch.testing.assert_close(shift_time(shift_time(t, 2.0), 1.5), shift_time(t, 3.0))


def test_dimension_shift() -> None:
    assert dimension_shift(32 * 16 * 16) == pytest.approx(math.sqrt(2.0))
    assert dimension_shift(768 * 16 * 16) == pytest.approx(math.sqrt(48.0))
    assert dimension_shift(4096) == 1.0
    assert dimension_shift(8 * 4 * 4, base_dim=64) == pytest.approx(math.sqrt(2.0))


def test_time_sampler_uniform_moments() -> None:
    t = TimeSampler("uniform")(200_000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (200_000,) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) < 1.0
    se = math.sqrt(1 / 12 / t.numel())
    assert abs(float(t.mean()) - 0.5) < 5 * se
    assert abs(float(t.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / t.numel())  # SE² = (μ₄ − σ⁴)/n = 1/(180 n)


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-0.8, 0.6)])
def test_time_sampler_logit_normal_moments(mean: float, std: float) -> None:
    n = 200_000
    t = TimeSampler("logit_normal", mean=mean, std=std)(n, generator=torch.Generator().manual_seed(1)).double()
    logit = torch.log(t) - torch.log1p(-t)
    assert abs(float(logit.mean()) - mean) < 5 * std / math.sqrt(n)
    assert abs(float(logit.std()) - std) < 5 * std / math.sqrt(2 * n)
    # the median of sigmoid(N(m, s²)) is sigmoid(m)
    assert abs(float(t.median()) - 1 / (1 + math.exp(-mean))) < 0.01


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_time_sampler_applies_shift_after_draw(kind: str) -> None:
    base = TimeSampler(kind)(1000, generator=torch.Generator().manual_seed(2))
    shifted = TimeSampler(kind, shift=math.sqrt(2.0))(1000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(shifted, shift_time(base, math.sqrt(2.0)))
    capped = TimeSampler(kind, t_max=0.999)(1000, generator=torch.Generator().manual_seed(2))
    assert float(capped.max()) <= 0.999


def test_time_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TimeSampler("beta")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TimeSampler("logit_normal", std=0.0)
