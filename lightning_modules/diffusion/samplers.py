"""Samplers: Euler and Heun ODE and Euler–Maruyama SDE for the linear flow, DDPM ancestral for VP.

Flow samplers integrate from t = 1 (noise) to t = 0 (data) with a *velocity function*
``velocity_fn(state, t) -> velocity`` where t has shape (B,). The state is either one tensor or a
tuple of tensors integrated in parallel with the same time grid (e.g. SR-DiT's latent and its REG
cls token); ``velocity_fn`` then receives the tuple and returns a tuple of velocities in the same
order, and the sampler returns a tuple. The state is kept in ``state_dtype`` (float64 by default,
as SR-DiT's official sampler does) and the model is called with each element cast back to the
dtype of the corresponding initial noise; results are returned in that dtype.

Randomness is injectable: pass the initial noise, and either ``step_noise`` (the per-step normals)
or a ``generator``. All samplers run under ``torch.no_grad()``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from speedrun_diffusion.lightning_modules.diffusion.flow import shift_time
from speedrun_diffusion.lightning_modules.diffusion.state import State, pack_state, state_parts
from speedrun_diffusion.lightning_modules.diffusion.vp import LogSNRSchedule, alpha_sigma

__all__ = [
    "flow_time_grid",
    "euler_ode_sample",
    "heun_ode_sample",
    "euler_maruyama_sample",
    "ddpm_ancestral_sample",
]


def _call(
    fn: Callable[[State, Tensor], State],
    xs: tuple[Tensor, ...],
    t: Tensor,
    dtypes: tuple[torch.dtype, ...],
    like: State,
) -> tuple[Tensor, ...]:
    """Evaluate fn on the state cast to the model dtypes, t of shape (B,); outputs back in xs' dtype."""
    batch = xs[0].shape[0]
    t_in = t.to(xs[0].device).reshape(1).repeat(batch).to(dtypes[0])  # float64 grid, then cast
    out = state_parts(fn(pack_state([x.to(d) for x, d in zip(xs, dtypes)], like), t_in))
    if len(out) != len(xs):
        raise ValueError(f"the denoiser returned {len(out)} tensors for a state of {len(xs)}")
    return tuple(o.to(x.dtype) for o, x in zip(out, xs))


def _step_noise(
    step_noise: Sequence[Tensor | Sequence[Tensor]] | Tensor | None,
    index: int,
    xs: tuple[Tensor, ...],
    generator: torch.Generator | None,
) -> tuple[Tensor, ...]:
    """Normals of one step, one per state element in state order (element 0 first)."""
    if step_noise is None:
        return tuple(
            torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator) for x in xs
        )
    given = state_parts(step_noise[index])
    if len(given) != len(xs) or any(g.shape != x.shape for g, x in zip(given, xs)):
        raise ValueError(f"step_noise[{index}] does not match the state's shapes")
    return tuple(g.to(device=x.device, dtype=x.dtype) for g, x in zip(given, xs))


def _check_steps(step_noise: Sequence | Tensor | None, expected: int) -> None:
    if step_noise is not None and len(step_noise) != expected:
        raise ValueError(f"step_noise has {len(step_noise)} entries, the sampler takes {expected}")


def flow_time_grid(
    num_points: int,
    t_end: float = 0.0,
    shift: float = 1.0,
    append_zero: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Shifted flow time grid shift_time(linspace(1, t_end, num_points) [++ 0], shift).

    Decreasing from 1 (noise). The grids of the papers' samplers:
    SR-DiT samplers.py ``euler_maruyama_sampler``: (N, 0.04, s, append_zero=True), float64;
    Euler ODE over [1, 0] in N steps: (N + 1, 0.0, s);
    RAE ``Sampler.sample_ode`` (ends at shift(0.001), not 0): (N, 0.001, s, dtype=torch.float32).
    """
    if num_points < 1:
        raise ValueError("need at least one time point")
    t = torch.linspace(1.0, t_end, num_points, dtype=dtype, device=device)
    if append_zero:
        t = torch.cat([t, t.new_zeros(1)])
    return shift_time(t, shift)


def _start(noise: State, grid: Tensor, state_dtype: torch.dtype) -> tuple[Tensor, tuple[torch.dtype, ...],
                                                                          tuple[Tensor, ...]]:
    """(grid on the noise's device in ``state_dtype``, the model dtypes, the state in ``state_dtype``)."""
    parts = state_parts(noise)
    return (grid.to(device=parts[0].device, dtype=state_dtype), tuple(n.dtype for n in parts),
            tuple(n.to(state_dtype) for n in parts))


def _ode_sample(velocity_fn: Callable[[State, Tensor], State], noise: State, grid: Tensor, state_dtype: torch.dtype,
                progress: bool, heun: bool) -> State:
    """Euler steps along ``grid``, each followed by Heun's correction when ``heun`` (except into t = 0)."""
    grid, dtypes, xs = _start(noise, grid, state_dtype)
    desc = "heun ode" if heun else "euler ode"
    for i in tqdm(range(grid.shape[0] - 1), disable=not progress, desc=desc, leave=False):
        t_cur, t_next = grid[i], grid[i + 1]
        vs = _call(velocity_fn, xs, t_cur, dtypes, noise)
        euler = tuple(x + (t_next - t_cur) * v for x, v in zip(xs, vs))
        if not heun or float(t_next) == 0.0:  # Heun's last step stays first order: v at t = 0 is not needed
            xs = euler
            continue
        vs_next = _call(velocity_fn, euler, t_next, dtypes, noise)
        xs = tuple(x + (t_next - t_cur) * 0.5 * (v + w) for x, v, w in zip(xs, vs, vs_next))
    return pack_state([x.to(d) for x, d in zip(xs, dtypes)], noise)


@torch.no_grad()
def euler_ode_sample(
    velocity_fn: Callable[[State, Tensor], State],
    noise: State,
    num_steps: int,
    shift: float = 1.0,
    progress: bool = False,
    *,
    timesteps: Tensor | None = None,
    state_dtype: torch.dtype = torch.float64,
) -> State:
    """Euler integration of the probability-flow ODE dx/dt = v(x, t) (RAE ``Sampler.sample_ode``
    with method 'euler', reference/rae_stage2 README "Samplers"):
        x_{k+1} = x_k + (t_{k+1} − t_k)·v(x_k, t_k).

    The model sees t of shape (B,) in the dtype of the (first) noise tensor. Grid:
    ``flow_time_grid(num_steps + 1, 0.0, shift)`` (linspace(1, 0, num_steps + 1), shifted),
    i.e. num_steps model calls; ``timesteps`` (a decreasing 1-D tensor) overrides it, e.g. RAE's
    grid ending at shift(0.001): ``flow_time_grid(N, 0.001, s, dtype=torch.float32)`` (N − 1
    steps, no final denoising, as the official sampler).
    """
    grid = flow_time_grid(num_steps + 1, 0.0, shift) if timesteps is None else timesteps
    return _ode_sample(velocity_fn, noise, grid, state_dtype, progress, heun=False)


@torch.no_grad()
def heun_ode_sample(velocity_fn: Callable[[State, Tensor], State], noise: State, num_steps: int, shift: float = 1.0,
                    progress: bool = False, *, state_dtype: torch.dtype = torch.float64) -> State:
    """Heun's second-order integration of the probability-flow ODE (Karras et al. 2022, EDM Alg. 1 without churn),
    on the grid of ``euler_ode_sample``:

        x' = x_k + (t_{k+1} − t_k)·v(x_k, t_k),
        x_{k+1} = x_k + (t_{k+1} − t_k)·½·(v(x_k, t_k) + v(x', t_{k+1}))   (Euler, x_{k+1} = x', when t_{k+1} = 0).

    2·num_steps − 1 model calls; the error falls as num_steps⁻² where Euler's falls as num_steps⁻¹.
    """
    return _ode_sample(velocity_fn, noise, flow_time_grid(num_steps + 1, 0.0, shift), state_dtype, progress, heun=True)


def _em_drift(x: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """SR-DiT samplers.py drift d = v − ½·g²·s with g² = 2t and the linear-path score
    s = (−(1 − t)·v − x)/(t² + (1 − t)·t), computed literally as the official code does.
    """
    var = t**2 + (1 - t) * t  # σ² − (α/α')·σ'·σ with α = 1 − t, σ = t
    score = (-(1 - t) * v - x) / var
    return v - 0.5 * (2 * t) * score


@torch.no_grad()
def euler_maruyama_sample(
    velocity_fn: Callable[[State, Tensor], State],
    noise: State,
    num_steps: int,
    shift: float = 1.0,
    t_last: float = 0.04,
    generator: torch.Generator | None = None,
    step_noise: Sequence[Tensor | Sequence[Tensor]] | Tensor | None = None,
    progress: bool = False,
    *,
    timesteps: Tensor | None = None,
    last_step_time: float | None = None,
    state_dtype: torch.dtype = torch.float64,
) -> State:
    """Euler–Maruyama on the reverse SDE with diffusion g² = 2t (SR-DiT samplers.py
    ``euler_maruyama_sampler`` spec, reference/srdit/README "Sampler and guidance").

    Grid: t = linspace(1, t_last, num_steps) in float64, then 0 appended, then shift_time(·, shift)
    (``timesteps`` overrides it: any decreasing grid, its last interval taken deterministically).
    For i = 0 … num_steps − 2 (dt = t_{i+1} − t_i < 0), with v = velocity_fn(x, t_i):
        s = (−(1 − t)·v − x)/(t² + (1 − t)·t),  d = v − ½·(2t)·s,
        x ← x + d·dt + √(2t)·√|dt|·ε_i,
    then the last step t_{N−1} → 0 makes one more model call and a deterministic Euler step
    x ← x + d·dt. num_steps model calls in all. A tuple state (latent, cls token) is updated
    element by element with the same t and the velocities returned for each element.

    Step noise: ε_i for i = 0 … num_steps − 2, and within a step one normal per state element in
    state order (latent first, then cls token) — the official draw order. ``step_noise[i]`` is a
    tensor (single state; a stacked (num_steps − 1, B, …) tensor works too) or a sequence aligned
    with the state (e.g. ``list(zip(step_noise, step_noise_cls))`` for the SR-DiT reference
    vectors); otherwise the normals are drawn in ``state_dtype`` from ``generator`` in that order.

    ``last_step_time`` reproduces RAE's ``last_step='Mean'`` (official sample_sde): the final drift
    is evaluated at that *unshifted* time and the step is −last_step_time, instead of the shifted
    grid's last interval. Guidance: wrap the network in a GuidedDenoiser with an interval on t
    (SR-DiT combines drifts, which equals combining velocities since d is affine in v).
    """
    if timesteps is None:
        if not 0.0 < t_last < 1.0:
            raise ValueError("t_last must lie in (0, 1): the score is singular at t = 0")
        grid = flow_time_grid(num_steps, t_last, shift, append_zero=True)
    else:
        grid = timesteps
    grid, dtypes, xs = _start(noise, grid, state_dtype)
    num_stochastic = grid.shape[0] - 2
    _check_steps(step_noise, num_stochastic)
    steps = tqdm(range(num_stochastic + 1), disable=not progress, desc="euler-maruyama", leave=False)
    for i in steps:
        t_cur, t_next = grid[i], grid[i + 1]
        if i == num_stochastic and last_step_time is not None:
            t_cur = grid.new_tensor(last_step_time)
            t_next = grid.new_zeros(())
        dt = t_next - t_cur
        vs = _call(velocity_fn, xs, t_cur, dtypes, noise)
        ds = tuple(_em_drift(x, v, t_cur) for x, v in zip(xs, vs))
        if i == num_stochastic:
            xs = tuple(x + d * dt for x, d in zip(xs, ds))  # final step: deterministic Euler
        else:
            eps = _step_noise(step_noise, i, xs, generator)
            g = torch.sqrt(2 * t_cur)  # √(g²) with g² = 2t, times ε·√|dt| as the official code
            xs = tuple(x + d * dt + g * (e * torch.sqrt(dt.abs())) for x, d, e in zip(xs, ds, eps))
    return pack_state([x.to(d) for x, d in zip(xs, dtypes)], noise)


# Which DDPM step variance γ weights (SiD2 Sec. 1.1 leaves the reading ambiguous, see ddpm_ancestral_sample):
# "small" = the posterior σ²_{t→s} (the paper's text), "large" = the forward transition σ²_{t|s}.
GammaOn = Literal["small", "large"]


@torch.no_grad()
def ddpm_ancestral_sample(
    x_pred_fn: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    schedule: LogSNRSchedule,
    num_steps: int = 512,
    gamma: float = 0.3,
    clip_x: float | None = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    *,
    step_noise: Sequence[Tensor] | Tensor | None = None,
    gamma_on: GammaOn = "small",
) -> Tensor:
    """Ancestral sampling with p(z_s | z_t) = q(z_s | z_t, x = x̂) (SiD2 eq. 3; VDM posterior).

    Times t_i = 1 − i/num_steps; z_1 = noise; x_pred_fn(z, t (B,)) → x̂ (convert v/ε outside, e.g.
    with x_from_v), clipped to [−clip_x, clip_x] (SiD2 A.4 clip_x = 'static'). For s < t:
        α_{t|s} = α_t/α_s,  σ²_{t|s} = σ_t² − α²_{t|s}σ_s²  (VDM; the paper's text drops the square),
        σ²_{t→s} = (1/σ_s² + α²_{t|s}/σ²_{t|s})⁻¹,
        μ_{t→s} = σ²_{t→s}·(α_{t|s}/σ²_{t|s}·z_t + α_s/σ_s²·x̂),
        z_s = μ_{t→s} + σ_{t→s}^γ·σ_{t|s}^{1−γ}·ε_i  (SiD2 Sec. 1.1; A.4 logvar_type = 0.3).
    ``gamma_on`` names the variance γ weights, since SiD2's text and the earlier public code differ:
        "small" (default): log σ² = γ·log σ²_{t→s} + (1 − γ)·log σ²_{t|s}, the paper's text (Sec. 1.1),
            γ = 0.3 on the small posterior variance σ²_{t→s} = (1 − e^(λ_t − λ_s))·σ_s²;
        "large": log σ² = γ·log σ²_{t|s} + (1 − γ)·log σ²_{t→s}, γ on the large transition variance
            σ²_{t|s} = (1 − e^(λ_t − λ_s))·σ_t² — the 'fixed_medium:frac' of the progressive-distillation
            code (Salimans & Ho 2022) whose 'logvar_type' A.4 echoes, and Improved DDPM's v·log β + (1 − v)·log β̃.
    The two agree at γ = 0.5, and "large" with γ equals "small" with 1 − γ.
    The final step (to s = 0) returns x̂ without noise; num_steps model calls, num_steps − 1
    normals ε_i (``step_noise[i]`` or drawn from ``generator`` in float64). Schedule arithmetic
    and the state are float64 (σ²_{t|s} as −σ_t²·expm1(λ_t − λ_s), the same quantity without
    cancellation); the model sees z in noise's dtype and the result is returned in it.
    """
    if num_steps < 1:
        raise ValueError("need at least one step")
    if gamma_on not in ("small", "large"):
        raise ValueError(f"gamma_on must be 'small' (σ²_{{t→s}}, SiD2's text) or 'large' (σ²_{{t|s}}), "
                         f"got {gamma_on!r}")
    _check_steps(step_noise, num_steps - 1)
    # the exponent of the small posterior variance σ²_{t→s}; the large σ²_{t|s} gets the rest
    w_small = gamma if gamma_on == "small" else 1.0 - gamma
    dtype = noise.dtype
    grid = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64, device=noise.device)
    logsnr = schedule(grid)
    z = noise.to(torch.float64)
    x_hat = z
    for i in tqdm(range(num_steps), disable=not progress, desc="ddpm", leave=False):
        x_hat = _call(x_pred_fn, (z,), grid[i], (dtype,), noise)[0]
        if clip_x is not None:
            x_hat = x_hat.clamp(-clip_x, clip_x)
        if i == num_steps - 1:
            break
        lam_t, lam_s = logsnr[i], logsnr[i + 1]
        alpha_t, sigma_t = alpha_sigma(lam_t)
        alpha_s, sigma_s = alpha_sigma(lam_s)
        alpha_ts = alpha_t / alpha_s
        var_ts = -(sigma_t**2) * torch.expm1(lam_t - lam_s)  # σ_t² − α²_{t|s}σ_s²
        var_post = 1.0 / (1.0 / sigma_s**2 + alpha_ts**2 / var_ts)
        mean = var_post * (alpha_ts / var_ts * z + alpha_s / sigma_s**2 * x_hat)
        log_std = 0.5 * (w_small * torch.log(var_post) + (1.0 - w_small) * torch.log(var_ts))
        eps = _step_noise(step_noise, i, (z,), generator)[0]
        z = mean + torch.exp(log_std) * eps
    return x_hat.to(dtype)
