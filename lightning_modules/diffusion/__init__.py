"""Diffusion math with no trainable state: linear flow, VP log-SNR schedules, samplers (functions and the sampler
objects a recipe's ``sampling`` group holds), guidance."""
from __future__ import annotations

from speedrun_diffusion.lightning_modules.diffusion.flow import (
    TimeSampler,
    dimension_shift,
    expand_like,
    flow_interpolate,
    flow_velocity_target,
    noise_from_velocity,
    shift_time,
    x0_from_velocity,
)
from speedrun_diffusion.lightning_modules.diffusion.guidance import GuidedDenoiser
from speedrun_diffusion.lightning_modules.diffusion.rae_flow import RAETransport, rae_sample, rae_shift, rae_time_grid
from speedrun_diffusion.lightning_modules.diffusion.samplers import (
    ddpm_ancestral_sample,
    euler_maruyama_sample,
    euler_ode_sample,
    flow_time_grid,
    heun_ode_sample,
)
from speedrun_diffusion.lightning_modules.diffusion.sampling import (
    DDPM,
    EulerMaruyama,
    EulerODE,
    FlowSampler,
    Heun,
    Sampler,
    SamplingConfig,
    VPSampler,
)
from speedrun_diffusion.lightning_modules.diffusion.state import State, pack_state, state_parts
from speedrun_diffusion.lightning_modules.diffusion.vp import (
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

__all__ = [
    "DDPM",
    "EulerMaruyama",
    "EulerODE",
    "FlowSampler",
    "GuidedDenoiser",
    "Heun",
    "Sampler",
    "SamplingConfig",
    "VPSampler",
    "heun_ode_sample",
    "RAETransport",
    "rae_sample",
    "rae_shift",
    "rae_time_grid",
    "LogSNRSchedule",
    "State",
    "TimeSampler",
    "alpha_sigma",
    "ddpm_ancestral_sample",
    "dimension_shift",
    "eps_from_v",
    "eps_from_x",
    "euler_maruyama_sample",
    "euler_ode_sample",
    "expand_like",
    "flow_interpolate",
    "flow_time_grid",
    "flow_velocity_target",
    "logsnr_cosine",
    "logsnr_interpolated_cosine",
    "logsnr_shifted_cosine",
    "noise_from_velocity",
    "pack_state",
    "shift_time",
    "state_parts",
    "v_target",
    "vp_interpolate",
    "x0_from_velocity",
    "x_from_eps",
    "x_from_v",
]
