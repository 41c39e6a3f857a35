"""The sampling surface every recipe shares: sampler objects chosen from YAML, and the ``SamplingConfig`` group.

    sampling:
      sampler: {class_path: EulerMaruyama}   # flow recipes: EulerODE, Heun, EulerMaruyama; SiD2 (VP): DDPM
      num_steps: 250
      guidance_scale: 1.5                    # w of D = D_guide + w·(D_cond − D_guide); 1 = no guidance
      guidance_interval: [0.0, 0.7]          # closed, in the recipe's variable (flow t; log-SNR for SiD2); null: every
                                             # step; auto: the paper's (SiD2 A.4 per resolution; null elsewhere)

A sampler object holds only the settings of its algorithm (DDPM's γ, Euler–Maruyama's last time); the model,
the process (time shift, log-SNR schedule) and guidance come from the recipe. ``Sampler.process`` says which
process it integrates, so a recipe refuses a sampler of the other kind with a one-line error.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion.samplers import (
    GammaOn,
    ddpm_ancestral_sample,
    euler_maruyama_sample,
    euler_ode_sample,
    heun_ode_sample,
)
from speedrun_diffusion.lightning_modules.diffusion.state import State
from speedrun_diffusion.lightning_modules.diffusion.vp import LogSNRSchedule

__all__ = ["DDPM", "EulerMaruyama", "EulerODE", "FlowSampler", "Heun", "Sampler", "SamplingConfig", "VPSampler"]


class Sampler:
    """Base of the sampler objects. ``process`` is "flow" (integrates a velocity field from t = 1 to t = 0)
    or "vp" (steps a VP process with an x-prediction)."""

    process: ClassVar[str] = ""

    def check_process(self, process: str, recipe: str) -> None:
        """Raise ValueError naming the recipe when this sampler cannot run its process."""
        if self.process != process:
            kinds = "EulerODE, Heun or EulerMaruyama" if process == "flow" else "DDPM"
            raise ValueError(f"{recipe} samples a {process} process: {type(self).__name__} integrates a "
                             f"{self.process} process; choose {kinds} (sampling.sampler)")


class FlowSampler(Sampler):
    """Integrates ``velocity_fn(x, t) -> v`` of the linear flow from noise (t = 1) to data (t = 0)."""

    process = "flow"

    def sample(self, velocity_fn: Callable[[State, Tensor], State], noise: State, num_steps: int,
               shift: float = 1.0, generator: torch.Generator | None = None, progress: bool = False) -> State:
        raise NotImplementedError


@dataclass(frozen=True)
class EulerODE(FlowSampler):
    """Euler on the probability-flow ODE, ``num_steps`` model calls (SiT's ODE; RAE App. F: 50 steps)."""

    def sample(self, velocity_fn, noise, num_steps, shift=1.0, generator=None, progress=False):
        return euler_ode_sample(velocity_fn, noise, num_steps, shift=shift, progress=progress)


@dataclass(frozen=True)
class Heun(FlowSampler):
    """Heun's second-order method on the probability-flow ODE (EDM Alg. 1 without churn): 2·num_steps − 1
    model calls, error ∝ num_steps⁻² — fewer steps for the same accuracy than Euler."""

    def sample(self, velocity_fn, noise, num_steps, shift=1.0, generator=None, progress=False):
        return heun_ode_sample(velocity_fn, noise, num_steps, shift=shift, progress=progress)


@dataclass(frozen=True)
class EulerMaruyama(FlowSampler):
    """Euler–Maruyama on the reverse SDE with g² = 2t, down to ``t_last`` and one deterministic step to 0
    (SR-DiT's sampler; SiT's and SpeedDiff's SDE, 250 NFE)."""

    t_last: float = 0.04

    def __post_init__(self) -> None:
        if not 0.0 < self.t_last < 1.0:
            raise ValueError(f"EulerMaruyama t_last must lie in (0, 1) (the score is singular at 0), got {self.t_last}")

    def sample(self, velocity_fn, noise, num_steps, shift=1.0, generator=None, progress=False):
        return euler_maruyama_sample(velocity_fn, noise, num_steps, shift=shift, t_last=self.t_last,
                                     generator=generator, progress=progress)


class VPSampler(Sampler):
    """Steps a VP process z = α·x + σ·ε with ``x_pred_fn(z, t) -> x̂`` on a log-SNR schedule."""

    process = "vp"

    def sample(self, x_pred_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, schedule: LogSNRSchedule,
               num_steps: int, generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class DDPM(VPSampler):
    """Ancestral sampling, SiD2 eq. 3, with the step variance σ_{t→s}^γ·σ_{t|s}^{1−γ} (A.4: γ = 0.3 on the small
    posterior variance, ``gamma_on``) and x̂ clipped to [−clip_x, clip_x] (A.4 static clipping; None: off)."""

    gamma: float = 0.3
    gamma_on: GammaOn = "small"
    clip_x: float | None = 1.0

    def __post_init__(self) -> None:
        if self.gamma_on not in ("small", "large"):
            raise ValueError(f"DDPM gamma_on must be 'small' or 'large', got {self.gamma_on!r}")

    def sample(self, x_pred_fn, noise, schedule, num_steps, generator=None, progress=False):
        return ddpm_ancestral_sample(x_pred_fn, noise, schedule, num_steps, gamma=self.gamma, clip_x=self.clip_x,
                                     generator=generator, progress=progress, gamma_on=self.gamma_on)


@dataclass(frozen=True)
class SamplingConfig:
    """How a recipe samples (its ``sampling`` argument group; ``sample()`` takes the same names as overrides).

    Args:
        sampler: the sampler object (flow: EulerODE, Heun, EulerMaruyama; VP: DDPM).
        num_steps: sampler steps (model calls: Heun twice as many, CFG doubles the batch of each).
        guidance_scale: w in D_guide + w·(D_cond − D_guide), the guide being the unconditional prediction (CFG)
            or the autoguidance guide; 1 = no guidance. (SiD2's paper "guidance g" is w = 1 + g.)
        guidance_interval: closed [low, high] of the recipe's variable where guidance applies — flow time t
            (t = 1 noise) for SiT, SR-DiT, RAE and SpeedDiff, log-SNR λ for SiD2; None: every step; "auto": the
            recipe's paper interval (SiD2 A.4, per resolution; every step for the others).
    """

    sampler: Sampler = EulerMaruyama()
    num_steps: int = 250
    guidance_scale: float = 1.0
    guidance_interval: tuple[float, float] | Literal["auto"] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sampler, Sampler):
            raise TypeError(f"sampling.sampler must be a Sampler object (EulerODE, Heun, EulerMaruyama, DDPM), got "
                            f"{type(self.sampler).__name__}")
        if self.num_steps < 1:
            raise ValueError(f"sampling.num_steps must be >= 1, got {self.num_steps}")
        if self.guidance_interval is not None and self.guidance_interval != "auto":
            low, high = (float(v) for v in self.guidance_interval)
            if low > high:
                raise ValueError(f"sampling.guidance_interval must be [low, high] with low <= high, got "
                                 f"{self.guidance_interval}")
            object.__setattr__(self, "guidance_interval", (low, high))
