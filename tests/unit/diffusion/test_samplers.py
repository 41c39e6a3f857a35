"""Samplers on Gaussian data with exact denoisers (analytic), plus their step-level contracts.

Two kinds of distribution checks (see gaussian_toy):
* Monte-Carlo: 10 000 samples from N(0, I) noise; sample mean and covariance within 5 Monte-Carlo
  standard errors of the target (step counts chosen so the discretisation bias is ≲ 2 SE).
* Exact law: the samplers are affine in their Gaussian inputs here, so the output law is computed
  exactly (linear_law) and compared with a tolerance derived from the first-order discretisation
  error (halving when the step count doubles).
"""
from __future__ import annotations

import math

import pytest
import torch

import speedrun_diffusion.lightning_modules.diffusion.samplers as samplers_module
from speedrun_diffusion.lightning_modules.diffusion import (
    LogSNRSchedule,
    alpha_sigma,
    ddpm_ancestral_sample,
    euler_maruyama_sample,
    euler_ode_sample,
    flow_time_grid,
    heun_ode_sample,
    shift_time,
)
from tests.helpers.gaussian_toy import (
    EYE,
    MU,
    SIGMA,
    assert_moments,
    flow_velocity,
    gaussian_noise,
    linear_law,
    max_errors,
    vp_x_posterior,
)

N_SAMPLES = 10_000
KINDS = ("cosine", "shifted_cosine", "interpolated_cosine")


def vp_exact_x_pred(schedule: LogSNRSchedule):
    """x̂(z, t) = E[x | z_t] for x ~ N(MU, SIGMA) under the schedule (VP, SiD2 eq. 1)."""

    def x_pred(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (z.shape[0],) and torch.all(t == t[0])
        alpha, sigma = alpha_sigma(schedule(t[:1].double()))
        return vp_x_posterior(z, float(alpha), float(sigma)).to(z.dtype)

    return x_pred


def em_final_step_law(tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Law after SR-DiT's deterministic last step from the exact marginal at t = tau.

    Last step: x ← x + d·(0 − tau), d = v − tau·s, s = (−(1 − tau)v − x)/tau, i.e.
    x ← x − tau·((2 − tau)·v + x); affine in x, applied to x_tau ~ N((1 − tau)μ, C_tau).
    """

    def step(x: torch.Tensor) -> torch.Tensor:
        v = flow_velocity(x, torch.full((x.shape[0],), tau, dtype=torch.float64))
        return x - tau * ((2 - tau) * v + x)

    offset = step(torch.zeros(1, 3, dtype=torch.float64))[0]
    matrix = (step(torch.eye(3, dtype=torch.float64)) - offset).T
    mean = (1 - tau) * MU
    cov = (1 - tau) ** 2 * SIGMA + tau**2 * EYE
    return matrix @ mean + offset, matrix @ cov @ matrix.T


# ---------------------------------------------------------------- Monte-Carlo: data moments


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_ode_reproduces_gaussian_monte_carlo(shift: float) -> None:
    samples = euler_ode_sample(flow_velocity, gaussian_noise(N_SAMPLES, seed=1), 200, shift=shift)
    assert samples.dtype == torch.float32 and samples.shape == (N_SAMPLES, 3)
    assert_moments(samples, MU, SIGMA)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_maruyama_reproduces_gaussian_monte_carlo(shift: float) -> None:
    # t_last small: the deterministic last step leaves noise of std ~ t_last (see next test)
    samples = euler_maruyama_sample(
        flow_velocity, gaussian_noise(N_SAMPLES, seed=2), 200, shift=shift, t_last=0.005,
        generator=torch.Generator().manual_seed(3),
    )
    assert samples.dtype == torch.float32
    assert_moments(samples, MU, SIGMA)


def test_euler_maruyama_srdit_grid_monte_carlo() -> None:
    # SR-DiT settings (t_last = 0.04, s = √2): the target is the exact marginal at shift(0.04)
    # pushed through the official deterministic last step (≈ data + O(t_last²) extra variance)
    shift, steps = math.sqrt(2.0), 200
    tau = float(flow_time_grid(steps, 0.04, shift, append_zero=True)[-2])
    mean, cov = em_final_step_law(tau)
    samples = euler_maruyama_sample(
        flow_velocity, gaussian_noise(N_SAMPLES, seed=4), steps, shift=shift,
        generator=torch.Generator().manual_seed(5),
    )
    assert_moments(samples, mean, cov)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind", KINDS)
def test_ddpm_ancestral_reproduces_gaussian_monte_carlo(kind: str, gamma: float) -> None:
    schedule = LogSNRSchedule(kind, image_size=128)
    samples = ddpm_ancestral_sample(
        vp_exact_x_pred(schedule), gaussian_noise(N_SAMPLES, seed=6), schedule, num_steps=512,
        gamma=gamma, clip_x=None, generator=torch.Generator().manual_seed(7),
    )
    assert samples.dtype == torch.float32
    assert_moments(samples, MU, SIGMA)


# ---------------------------------------------------------------- exact laws: first-order convergence


def _converges(run, steps: int, noise_steps, target=(MU, SIGMA), tol: float = 0.02) -> None:
    """Exact-law error ≤ tol at `steps` and roughly halves at 2·steps (a consistent 1st-order scheme)."""
    coarse = max_errors(*linear_law(lambda n, e: run(n, e, steps), noise_steps(steps)), *target)
    fine = max_errors(*linear_law(lambda n, e: run(n, e, 2 * steps), noise_steps(2 * steps)), *target)
    assert coarse[0] < 1e-6 and fine[0] < 1e-6, (coarse, fine)  # the mean is transported exactly
    assert coarse[1] <= tol, coarse
    assert 0.35 <= fine[1] / coarse[1] <= 0.65, (coarse, fine)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_ode_exact_law(shift: float) -> None:
    _converges(lambda n, e, k: euler_ode_sample(flow_velocity, n, k, shift=shift), 100, lambda k: 0, tol=0.03)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_heun_exact_law_converges_at_second_order(shift: float) -> None:
    """Heun's error falls as steps⁻² (about a quarter when the steps double) and, at the same number of model
    calls (2·20 − 1 against 40), is less than half of Euler's."""
    def error(sample, steps: int) -> float:
        mean_err, cov_err = max_errors(*linear_law(lambda n, e: sample(flow_velocity, n, steps, shift=shift), 0))
        assert mean_err < 1e-6  # the mean is transported exactly
        return cov_err

    coarse, fine = error(heun_ode_sample, 20), error(heun_ode_sample, 40)
    assert 0.15 <= fine / coarse <= 0.35, (coarse, fine)
    assert coarse < 0.5 * error(euler_ode_sample, 40)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_maruyama_exact_law(shift: float) -> None:
    run = lambda n, e, k: euler_maruyama_sample(  # noqa: E731
        flow_velocity, n, k, shift=shift, t_last=0.001, step_noise=e
    )
    _converges(run, 100, lambda k: k - 1)


def test_euler_maruyama_srdit_grid_exact_law() -> None:
    shift, steps = math.sqrt(2.0), 100
    tau = float(flow_time_grid(steps, 0.04, shift, append_zero=True)[-2])
    mean, cov = linear_law(
        lambda n, e: euler_maruyama_sample(flow_velocity, n, steps, shift=shift, step_noise=e), steps - 1
    )
    errors = max_errors(mean, cov, *em_final_step_law(tau))
    assert errors[0] < 1e-9 and errors[1] < 0.01, errors


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind", KINDS)
def test_ddpm_ancestral_exact_law(kind: str, gamma: float) -> None:
    schedule = LogSNRSchedule(kind, image_size=128)
    run = lambda n, e, k: ddpm_ancestral_sample(  # noqa: E731
        vp_exact_x_pred(schedule), n, schedule, k, gamma=gamma, clip_x=None, step_noise=e
    )
    _converges(run, 128, lambda k: k - 1, tol=0.045)


# ---------------------------------------------------------------- step-level contracts


class Recorder:
    """Velocity function that records its inputs and returns a fixed function of them."""

    def __init__(self, fn=lambda x, t: torch.zeros_like(x)) -> None:
        self.fn = fn
        self.calls: list[tuple] = []

    def __call__(self, x, t):
        self.calls.append((x.clone() if torch.is_tensor(x) else tuple(p.clone() for p in x), t.clone()))
        return self.fn(x, t)


def test_flow_time_grid_matches_srdit_and_shift() -> None:
    grid = flow_time_grid(8, 0.04, math.sqrt(2.0), append_zero=True)
    assert grid.dtype == torch.float64 and grid.shape == (9,)
    base = torch.cat([torch.linspace(1.0, 0.04, 8, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(grid, shift_time(base, math.sqrt(2.0)), rtol=0, atol=0)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and bool((grid[1:] < grid[:-1]).all())
    ode = flow_time_grid(5, 0.0, 2.0)
    u = torch.linspace(1, 0, 5, dtype=torch.float64)
    torch.testing.assert_close(ode, 2 * u / (1 + u))


def test_euler_ode_steps_and_dtypes() -> None:
    # constant velocity: Σ dt = −1, so x_0 = noise − v exactly, whatever the shift
    rec = Recorder(lambda x, t: torch.ones_like(x))
    noise = torch.randn(4, 2, 3)
    out = euler_ode_sample(rec, noise, 7, shift=3.0)
    assert len(rec.calls) == 7 and out.dtype == noise.dtype
    torch.testing.assert_close(out, noise - 1, atol=1e-6, rtol=0)
    grid = flow_time_grid(8, 0.0, 3.0)
    for (x, t), expected in zip(rec.calls, grid[:-1]):
        assert x.dtype == torch.float32 and t.dtype == torch.float32 and t.shape == (4,)
        assert torch.all(t == expected.float())


def test_euler_ode_explicit_grid_rae_convention() -> None:
    # RAE sample_ode: N points from 1 to shift(0.001), N − 1 Euler steps, no final denoising
    shift = math.sqrt(48.0)
    grid = flow_time_grid(6, 0.001, shift, dtype=torch.float32)
    rec = Recorder(lambda x, t: x)  # dx/dt = x  ⇒ x ← x·(1 + dt) per step
    noise = torch.randn(3, 5)
    out = euler_ode_sample(rec, noise, num_steps=999, timesteps=grid)
    assert len(rec.calls) == 5
    factor = torch.prod(1 + (grid[1:].double() - grid[:-1].double()))
    torch.testing.assert_close(out, (noise.double() * factor).float())


def test_euler_maruyama_single_step_formula() -> None:
    # one stochastic step by hand (SR-DiT spec) with an arbitrary velocity field, then the last step
    noise = torch.randn(3, 4, dtype=torch.float64)
    eps = torch.randn(1, 3, 4, dtype=torch.float64)
    field = lambda x, t: torch.sin(x) + t[:, None]  # noqa: E731
    out = euler_maruyama_sample(field, noise, 2, shift=2.0, t_last=0.3, step_noise=eps)
    t0, t1 = 1.0, 2 * 0.3 / 1.3
    x = noise
    for t, t_next, e in ((t0, t1, eps[0]), (t1, 0.0, None)):
        v = field(x, torch.full((3,), t, dtype=torch.float64))
        score = (-(1 - t) * v - x) / (t * t + (1 - t) * t)
        drift = v - 0.5 * (2 * t) * score
        x = x + drift * (t_next - t) + (0 if e is None else math.sqrt(2 * t) * math.sqrt(t - t_next) * e)
    torch.testing.assert_close(out, x, rtol=1e-12, atol=1e-12)


def test_euler_maruyama_tuple_state_and_noise_order() -> None:
    # state (latent, cls); per step the latent normal is drawn before the cls normal (documented)
    latent, cls = torch.randn(2, 3, 2, 2), torch.randn(2, 5)
    field = lambda s, t: (0.5 * s[0] + t[:, None, None, None], -s[1])  # noqa: E731
    out = euler_maruyama_sample(field, (latent, cls), 6, shift=1.5, generator=torch.Generator().manual_seed(11))
    assert isinstance(out, tuple) and out[0].shape == latent.shape and out[1].shape == cls.shape
    g = torch.Generator().manual_seed(11)
    pinned = []
    for _ in range(5):
        a = torch.randn(latent.shape, dtype=torch.float64, generator=g)
        pinned.append((a, torch.randn(cls.shape, dtype=torch.float64, generator=g)))
    again = euler_maruyama_sample(field, (latent, cls), 6, shift=1.5, step_noise=pinned)
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    g = torch.Generator().manual_seed(11)
    cls_first = []
    for _ in range(5):
        c = torch.randn(cls.shape, dtype=torch.float64, generator=g)
        cls_first.append((torch.randn(latent.shape, dtype=torch.float64, generator=g), c))
    swapped = euler_maruyama_sample(field, (latent, cls), 6, shift=1.5, step_noise=cls_first)
    assert not torch.equal(swapped[0], out[0])
    with pytest.raises(ValueError):
        euler_maruyama_sample(field, (latent, cls), 6, step_noise=pinned[:4])


def test_euler_maruyama_calls_grid_dtype_and_rae_last_step() -> None:
    rec = Recorder()
    noise = torch.randn(3, 2)
    euler_maruyama_sample(rec, noise, 5, shift=2.0, t_last=0.04, generator=torch.Generator().manual_seed(0))
    grid = flow_time_grid(5, 0.04, 2.0, append_zero=True)
    assert len(rec.calls) == 5
    assert [float(t[0]) for _, t in rec.calls] == [float(v) for v in grid[:-1].float()]
    assert all(x.dtype == torch.float32 and t.dtype == torch.float32 for x, t in rec.calls)
    # RAE last_step='Mean': drift at the unshifted 0.04 and a step of −0.04; with v = 0 the drift is
    # d = −t·s = x, so the last step multiplies the state by 0.96
    rec = Recorder()
    gen = torch.Generator().manual_seed(0)
    out = euler_maruyama_sample(rec, noise, 5, shift=2.0, generator=gen, last_step_time=0.04)
    last_x, last_t = rec.calls[-1]
    assert torch.allclose(last_t, torch.full((3,), 0.04))
    torch.testing.assert_close(out, 0.96 * last_x)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_ddpm_step_is_sid2_eq3(gamma: float) -> None:
    # x̂ fixed (and clipped); the second call sees z_s = μ_{t→s} + σ_{t→s}^γ σ_{t|s}^{1−γ} ε, written
    # literally from SiD2 eq. 3 with α²_{t|s} in σ²_{t|s} (VDM)
    schedule = LogSNRSchedule("interpolated_cosine", image_size=128)
    x_fixed = torch.tensor([[0.3, -2.0, 1.5]], dtype=torch.float64).repeat(2, 1)
    rec = Recorder(lambda z, t: x_fixed.to(z.dtype))
    noise, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64)
    out = ddpm_ancestral_sample(rec, noise, schedule, num_steps=4, gamma=gamma, clip_x=1.0, step_noise=eps)
    x_hat = x_fixed.clamp(-1, 1)
    torch.testing.assert_close(out, x_hat)  # the last step returns x̂, no noise
    assert [float(t[0]) for _, t in rec.calls] == [1.0, 0.75, 0.5, 0.25]
    z = noise
    for i, (t, s) in enumerate(((1.0, 0.75), (0.75, 0.5), (0.5, 0.25))):
        a_t, s_t = alpha_sigma(schedule(torch.tensor(t, dtype=torch.float64)))
        a_s, s_s = alpha_sigma(schedule(torch.tensor(s, dtype=torch.float64)))
        a_ts = a_t / a_s
        var_ts = s_t**2 - a_ts**2 * s_s**2
        var_post = 1 / (1 / s_s**2 + a_ts**2 / var_ts)
        mean = var_post * (a_ts / var_ts * z + a_s / s_s**2 * x_hat)
        z = mean + var_post.sqrt() ** gamma * var_ts.sqrt() ** (1 - gamma) * eps[i]
        torch.testing.assert_close(rec.calls[i + 1][0], z, rtol=1e-9, atol=1e-9)


def _ddpm_step_variance(lam_t: float, lam_s: float, gamma: float, gamma_on: str) -> float:
    """exp(γ·log a + (1 − γ)·log b) from VDM's closed forms with r = e^(λ_t − λ_s):
    small σ²_{t→s} = (1 − r)·σ_s², large σ²_{t|s} = (1 − r)·σ_t², σ² = sigmoid(−λ);
    "small" (SiD2 Sec. 1.1 text): a = small, b = large; "large": a = large, b = small."""
    one_minus_r = -math.expm1(lam_t - lam_s)
    small, large = one_minus_r / (1 + math.exp(lam_s)), one_minus_r / (1 + math.exp(lam_t))
    a, b = (small, large) if gamma_on == "small" else (large, small)
    return math.exp(gamma * math.log(a) + (1 - gamma) * math.log(b))


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("gamma_on", ["small", "large"])
def test_ddpm_step_variance_closed_forms(gamma_on: str, gamma: float) -> None:
    # x̂ fixed; ε = 0 except ε_i = 1 moves z_s of step i by exactly σ_step(i), the rest of the path equal
    schedule = LogSNRSchedule("interpolated_cosine", image_size=128)
    x_fixed = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    noise = torch.tensor([[0.7, -1.1, 0.2]], dtype=torch.float64)
    lam = schedule(torch.linspace(1.0, 0.0, 5, dtype=torch.float64)).tolist()

    def z_seen(step_noise: torch.Tensor) -> list[torch.Tensor]:
        rec = Recorder(lambda z, t: x_fixed.to(z.dtype))
        ddpm_ancestral_sample(rec, noise, schedule, num_steps=4, gamma=gamma, clip_x=None,
                              step_noise=step_noise, gamma_on=gamma_on)
        return [z for z, _ in rec.calls]

    base = z_seen(torch.zeros(3, 1, 3, dtype=torch.float64))
    for i in range(3):
        kick = torch.zeros(3, 1, 3, dtype=torch.float64)
        kick[i] = 1.0
        std = z_seen(kick)[i + 1] - base[i + 1]
        expected = math.sqrt(_ddpm_step_variance(lam[i], lam[i + 1], gamma, gamma_on))
        torch.testing.assert_close(std, torch.full_like(std, expected), rtol=1e-9, atol=0)


def test_ddpm_gamma_readings_mirror_each_other() -> None:
    # γ on the large variance is 1 − γ on the small one; the readings meet at γ = 0.5 and differ at 0.3
    schedule = LogSNRSchedule("cosine")
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    x_pred = lambda z, t: 0.5 * z  # noqa: E731

    def run(gamma: float, gamma_on: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        return ddpm_ancestral_sample(x_pred, noise, schedule, 6, gamma=gamma, clip_x=None, generator=g,
                                     gamma_on=gamma_on)

    torch.testing.assert_close(run(0.3, "large"), run(0.7, "small"), rtol=0, atol=0)
    torch.testing.assert_close(run(0.5, "large"), run(0.5, "small"), rtol=0, atol=0)
    assert not torch.allclose(run(0.3, "large"), run(0.3, "small"))
    with pytest.raises(ValueError, match="gamma_on"):
        run(0.3, "posterior")


def test_ddpm_generator_clip_and_dtype() -> None:
    schedule = LogSNRSchedule("cosine")
    noise = torch.randn(5, 3)

    def run(seed: int, clip_x: float | None = 1.0) -> torch.Tensor:
        return ddpm_ancestral_sample(
            lambda z, t: 3 * z, noise, schedule, num_steps=6, clip_x=clip_x,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, c = run(1), run(1), run(2)
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) == 1.0 and float(run(1, clip_x=None).abs().max()) > 1.0


def test_progress_bar_only_when_asked(capsys) -> None:
    noise = torch.randn(2, 3)
    schedule = LogSNRSchedule("cosine")
    for progress in (False, True):
        euler_ode_sample(lambda x, t: x, noise, 3, progress=progress)
        euler_maruyama_sample(lambda x, t: x, noise, 3, progress=progress, generator=torch.Generator())
        ddpm_ancestral_sample(lambda z, t: z, noise, schedule, 3, progress=progress, generator=torch.Generator())
        err = capsys.readouterr().err
        assert all((name in err) == progress for name in ("euler ode", "euler-maruyama", "ddpm"))


def test_wrong_drift_sign_is_rejected(monkeypatch) -> None:
    # power check of the moment test: the reverse-SDE drift with the score sign flipped must fail
    def flipped(x, v, t):
        return v + 0.5 * (2 * t) * ((-(1 - t) * v - x) / (t * t + (1 - t) * t))

    monkeypatch.setattr(samplers_module, "_em_drift", flipped)
    samples = euler_maruyama_sample(
        flow_velocity, gaussian_noise(N_SAMPLES, seed=2), 50, t_last=0.005,
        generator=torch.Generator().manual_seed(3),
    )
    with pytest.raises(AssertionError):
        assert_moments(samples, MU, SIGMA)
