"""Conditional flow-matching loss with velocity prediction (SiT eq. 5; SR-DiT "L_vel").

x_t = (1 − t)·x0 + t·ε and the network regresses the velocity ε − x0 (DESIGN contract). The loss is
the per-sample mean squared error averaged over the batch, as in SiT and the SR-DiT official loss.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion import TimeSampler, flow_interpolate, flow_velocity_target


def velocity_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean of (v̂ − v)², shape (B,)."""
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def flow_matching_loss(
    net: Callable[..., Tensor],
    x0: Tensor,
    labels: Tensor,
    time_sampler: TimeSampler,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """{"velocity": batch mean of velocity_mse}; ``t`` and ``noise`` may be pinned (DESIGN randomness)."""
    if t is None:
        t = time_sampler(x0.shape[0], device=x0.device, generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    x_t = flow_interpolate(x0, noise, t)
    prediction = net(x_t, t, labels)
    return {"velocity": velocity_mse(prediction, flow_velocity_target(x0, noise)).mean()}
