"""VP log-SNR schedules (simple diffusion / SiD2) and x / ε / v conversions."""
from __future__ import annotations

import math

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion import (
    LogSNRSchedule,
    alpha_sigma,
    eps_from_v,
    eps_from_x,
    logsnr_cosine,
    logsnr_interpolated_cosine,
    logsnr_shifted_cosine,
    v_target,
    vp_interpolate,
    x_from_eps,
    x_from_v,
)

T = torch.linspace(0, 1, 1001, dtype=torch.float64)
SCHEDULES = [
    LogSNRSchedule("cosine"),
    LogSNRSchedule("cosine", logsnr_min=-10.0, logsnr_max=12.0),
    LogSNRSchedule("shifted_cosine", image_size=256, base_size=64),
    LogSNRSchedule("shifted_cosine", image_size=32, base_size=64),
    LogSNRSchedule("interpolated_cosine", image_size=512),
    LogSNRSchedule("interpolated_cosine", image_size=128, low=32, high=512),
]


def test_cosine_endpoints_and_alpha() -> None:
    lam = logsnr_cosine(T)
    assert lam[0].item() == pytest.approx(15.0, abs=1e-9) and lam[-1].item() == pytest.approx(-15.0, abs=1e-9)
    lam = logsnr_cosine(T, logsnr_min=-10.0, logsnr_max=12.0)
    assert lam[0].item() == pytest.approx(12.0, abs=1e-9) and lam[-1].item() == pytest.approx(-10.0, abs=1e-9)
    # untruncated limit: α_t = cos(πt/2) ⇔ λ = −2 log tan(πt/2)
    mid = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    wide = logsnr_cosine(mid, logsnr_min=-60.0, logsnr_max=60.0)
    torch.testing.assert_close(wide, -2 * torch.log(torch.tan(math.pi * mid / 2)), atol=1e-9, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_schedules_are_monotone_decreasing(schedule: LogSNRSchedule) -> None:
    lam = schedule(T)
    assert bool((lam[1:] < lam[:-1]).all())
    assert bool((schedule.dlogsnr_dt(T) < 0).all())


def test_shifted_is_cosine_plus_constant() -> None:
    base = logsnr_cosine(T)
    torch.testing.assert_close(logsnr_shifted_cosine(T, 256, 64), base + 2 * math.log(64 / 256))
    torch.testing.assert_close(logsnr_shifted_cosine(T, 64, 64), base)
    torch.testing.assert_close(LogSNRSchedule("shifted_cosine", image_size=256)(T), base - 2 * math.log(4.0))


def test_interpolated_endpoints_and_definition() -> None:
    lam = logsnr_interpolated_cosine(T, 256, low=32, high=512)
    high, low = logsnr_shifted_cosine(T, 256, 512), logsnr_shifted_cosine(T, 256, 32)
    # t = 0 follows the high-resolution shift, t = 1 the low-resolution one
    assert lam[0].item() == pytest.approx(high[0].item()) and lam[-1].item() == pytest.approx(low[-1].item())
    assert lam[0].item() == pytest.approx(15.0 + 2 * math.log(2.0))
    assert lam[-1].item() == pytest.approx(-15.0 + 2 * math.log(32 / 256))
    torch.testing.assert_close(lam, T * low + (1 - T) * high)
    torch.testing.assert_close(LogSNRSchedule("interpolated_cosine", image_size=256)(T), lam)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_dlogsnr_dt_matches_finite_differences(schedule: LogSNRSchedule) -> None:
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    h = 1e-6
    fd = (schedule(t + h) - schedule(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.dlogsnr_dt(t), fd, rtol=1e-6, atol=1e-6)
    # and autograd agrees with the analytic form
    t_req = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(schedule(t_req).sum(), t_req)
    torch.testing.assert_close(schedule.dlogsnr_dt(t), grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_inverse_round_trip(schedule: LogSNRSchedule) -> None:
    torch.testing.assert_close(schedule.inverse(schedule(T)), T, atol=1e-9, rtol=0)
    # out of range log-SNRs clamp to the ends
    beyond = schedule.inverse(torch.tensor([1e3, -1e3], dtype=torch.float64))
    assert beyond.tolist() == [0.0, 1.0]


def test_schedule_keeps_float32() -> None:
    t = torch.rand(7)
    assert LogSNRSchedule("interpolated_cosine")(t).dtype == torch.float32
    assert LogSNRSchedule("cosine").inverse(torch.zeros(3)).dtype == torch.float32
    assert LogSNRSchedule("cosine").inverse(torch.zeros(1)).item() == pytest.approx(0.5, abs=1e-6)


def test_alpha_sigma_is_variance_preserving_and_stable() -> None:
    lam = torch.linspace(-40, 40, 801, dtype=torch.float64)
    alpha, sigma = alpha_sigma(lam)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(lam))
    torch.testing.assert_close(torch.log(alpha**2 / sigma**2), lam)
    a32, s32 = alpha_sigma(torch.tensor([-30.0, 30.0]))
    assert float(a32[0]) > 0 and float(s32[1]) > 0  # no underflow to exactly 0


def test_x_eps_v_conversions_round_trip() -> None:
    x, eps = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 3, 4, 4, dtype=torch.float64)
    schedule = LogSNRSchedule("interpolated_cosine", image_size=128)
    alpha, sigma = alpha_sigma(schedule(torch.rand(5, dtype=torch.float64)))
    z = vp_interpolate(x, eps, alpha, sigma)
    torch.testing.assert_close(z, alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps)
    v = v_target(x, eps, alpha, sigma)
    torch.testing.assert_close(v, alpha[:, None, None, None] * eps - sigma[:, None, None, None] * x)
    torch.testing.assert_close(x_from_v(z, v, alpha, sigma), x)
    torch.testing.assert_close(eps_from_v(z, v, alpha, sigma), eps)
    torch.testing.assert_close(x_from_eps(z, eps, alpha, sigma), x)
    torch.testing.assert_close(eps_from_x(z, x, alpha, sigma), eps)
    # v = dz/dφ for z = cos φ·x + sin φ·ε (Salimans & Ho): check with α = cos φ, σ = sin φ
    phi = torch.tensor(0.7, dtype=torch.float64)
    def z_at(p):
        return vp_interpolate(x, eps, torch.cos(p), torch.sin(p))

    dz = (z_at(phi + 1e-6) - z_at(phi - 1e-6)) / 2e-6
    torch.testing.assert_close(dz, v_target(x, eps, torch.cos(phi), torch.sin(phi)), rtol=1e-6, atol=1e-6)


def test_schedule_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LogSNRSchedule("linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LogSNRSchedule("cosine", logsnr_min=5.0, logsnr_max=-5.0)
