"""RAE stage-2 process: linear flow on normalised encoder latents with a dimension-dependent time shift.

x_t = (1 − t)·x0 + t·ε, t = 1 noise, velocity target ε − x0 (RAE App. I; DESIGN contract). Training
times are logit-normal(0, 1) or uniform on [0, 0.999] (official ``check_interval``), then shifted by
t ← α·t / (1 + (α − 1)·t) with α = sqrt(m / 4096), m = tokens × channels of the latent (RAE Sec. 4.2,
after Esser et al. 2024): DINOv2-B at 256 px gives m = 256·768 and α = √48 ≈ 6.93. Sampling uses the same
shift on its time grid: Euler ODE with 50 steps by default (RAE App. F "Sampling"), or Euler–Maruyama.

Where the official sampler is plainly off we implement the paper by default and keep a switch that
replays it (reference/rae_stage2 README "Samplers"): ``official=True`` makes the ODE grid
shift(1 − linspace(0, 0.999, N)) in float32 — N points, N − 1 steps, ending at shift(0.001) ≠ 0 —
and makes the SDE's final "Mean" step use the *unshifted* time ``last_step_size``. The default ODE takes
``num_steps`` Euler steps from t = 1 down to t = 0; the default SDE ends with a deterministic step from
the shifted last grid time to 0.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion.flow import TimeSampler, dimension_shift, shift_time
from speedrun_diffusion.lightning_modules.diffusion.samplers import (
    euler_maruyama_sample,
    euler_ode_sample,
    flow_time_grid,
)
from speedrun_diffusion.lightning_modules.diffusion.state import State

__all__ = ["RAETransport", "rae_shift", "rae_time_grid", "rae_sample"]

TimeDist = Literal["logit_normal", "uniform"]
Method = Literal["ode", "sde"]


def rae_shift(latent_shape: Sequence[int] | int, base_dim: int = 4096) -> float:
    """α = sqrt(m / base_dim) with m = C·H·W (tokens × channels) of the latent (RAE Sec. 4.2).

    ``latent_shape`` is (C, H, W) or m itself; 768 × 16 × 16 → √48, 768 × 32 × 32 → √192.
    """
    m = latent_shape if isinstance(latent_shape, int) else math.prod(int(d) for d in latent_shape)
    return dimension_shift(int(m), base_dim)


def rae_time_grid(
    num_steps: int,
    shift: float,
    method: Method = "ode",
    official: bool = False,
    last_step_size: float = 0.04,
) -> Tensor:
    """Decreasing sampling times (RAE App. F; official ``Sampler.sample_ode`` / ``sample_sde`` when ``official``).

    ode: default shift(linspace(1, 0, num_steps + 1)) in float64 (num_steps Euler steps, ends at 0);
         official shift(1 − linspace(0, 0.999, num_steps)) in float32 (num_steps − 1 steps, ends at shift(0.001)).
    sde: shift(1 − linspace(0, 1 − last_step_size, num_steps)) followed by 0 (num_steps − 1 Euler–Maruyama
         steps and one final deterministic step; float32 when ``official``, float64 otherwise).
    """
    if num_steps < 2:
        raise ValueError(f"need num_steps >= 2, got {num_steps}")
    if method == "ode":
        if not official:
            return flow_time_grid(num_steps + 1, 0.0, shift)
        u = 1 - torch.linspace(0.0, 0.999, num_steps, dtype=torch.float32)
        return shift_time(u, shift)
    if method != "sde":
        raise ValueError(f"method must be 'ode' or 'sde', got {method!r}")
    if not 0.0 < last_step_size < 1.0:
        raise ValueError("last_step_size must lie in (0, 1): the score is singular at t = 0")
    dtype = torch.float32 if official else torch.float64
    u = 1 - torch.linspace(0.0, 1.0 - last_step_size, num_steps, dtype=dtype)
    return torch.cat([shift_time(u, shift), u.new_zeros(1)])


def rae_sample(
    velocity_fn: Callable[[State, Tensor], State],
    noise: State,
    shift: float,
    num_steps: int = 50,
    method: Method = "ode",
    official: bool = False,
    last_step_size: float = 0.04,
    generator: torch.Generator | None = None,
    step_noise: Sequence[Tensor] | Tensor | None = None,
    progress: bool = False,
    state_dtype: torch.dtype | None = None,
) -> State:
    """Integrate from noise (t = 1) to data with ``velocity_fn(x, t) -> v`` on the shifted grid (RAE App. F).

    ``official=True`` replays the official sampler (grid and last step above, float32 state); otherwise the
    state is float64 (``state_dtype`` overrides). The SDE uses w(t) = t ("sigma" diffusion, g² = 2t; the
    official default "SBDM" is negative in this time convention and yields NaN) and draws its
    num_steps − 1 normals from ``generator`` unless ``step_noise`` gives them. Guidance: wrap the network in
    ``GuidedDenoiser(...).with_labels(y)``.
    """
    dtype = state_dtype or (torch.float32 if official else torch.float64)
    grid = rae_time_grid(num_steps, shift, method, official, last_step_size)
    if method == "ode":
        return euler_ode_sample(velocity_fn, noise, num_steps, timesteps=grid, state_dtype=dtype, progress=progress)
    return euler_maruyama_sample(
        velocity_fn, noise, num_steps, generator=generator, step_noise=step_noise, progress=progress,
        timesteps=grid, last_step_time=last_step_size if official else None, state_dtype=dtype,
    )


@dataclass(frozen=True)
class RAETransport:
    """The stage-2 process in one object: time sampler for training, shift, and the sampler (RAE Sec. 4.2, App. F).

    ``latent_shape`` (C, H, W) fixes α = sqrt(C·H·W / 4096) unless ``shift`` is given. Training times:
    ``time_dist`` "logit_normal" (mean, std; official configs ``logit-normal_0_1``) or "uniform", both on
    [0, t_max = 0.999], then shifted.
    """

    latent_shape: tuple[int, int, int] = (768, 16, 16)
    time_dist: TimeDist = "logit_normal"
    time_mean: float = 0.0
    time_std: float = 1.0
    t_max: float = 0.999
    shift: float | None = None
    num_steps: int = 50
    method: Method = "ode"
    official: bool = False

    @property
    def time_shift(self) -> float:
        """α used in training and sampling."""
        return float(self.shift) if self.shift is not None else rae_shift(self.latent_shape)

    def time_sampler(self) -> TimeSampler:
        """t ~ time_dist on [0, t_max], then shifted by α (official ``Transport.sample``)."""
        return TimeSampler(self.time_dist, self.time_mean, self.time_std, self.time_shift, self.t_max)

    def time_grid(self, num_steps: int | None = None, method: Method | None = None) -> Tensor:
        return rae_time_grid(num_steps or self.num_steps, self.time_shift, method or self.method, self.official)

    def sample(
        self,
        velocity_fn: Callable[[State, Tensor], State],
        noise: State,
        num_steps: int | None = None,
        method: Method | None = None,
        generator: torch.Generator | None = None,
        step_noise: Sequence[Tensor] | Tensor | None = None,
        progress: bool = False,
    ) -> State:
        """``rae_sample`` with this transport's shift, steps, method and ``official`` switch."""
        return rae_sample(
            velocity_fn, noise, self.time_shift, num_steps or self.num_steps, method or self.method,
            self.official, generator=generator, step_noise=step_noise, progress=progress,
        )
