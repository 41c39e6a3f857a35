"""RAE stage-2 training loss: unweighted velocity regression on the shifted linear flow (RAE App. I, Sec. 4.2).

L = E_{x0, ε, t} ‖v̂(x_t, t, y) − (ε − x0)‖², x_t = (1 − t)·x0 + t·ε, per sample the mean over C, H, W
(official ``Transport.training_losses`` with path "Linear", prediction "velocity", no loss weight); the
batch mean is the training objective. Randomness is drawn in the official order — noise, then t, then
(inside the network, in train mode) label dropout — and each draw can be injected for replay.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion.flow import TimeSampler, flow_interpolate, flow_velocity_target
from speedrun_diffusion.lightning_modules.losses.flow_matching import velocity_mse

__all__ = ["TransportLoss", "rae_transport_loss"]


class TransportLoss(NamedTuple):
    """Per-sample loss (B,) and the tensors it was computed from."""

    loss: Tensor
    x_t: Tensor
    t: Tensor
    noise: Tensor
    target: Tensor
    prediction: Tensor


def rae_transport_loss(
    net: Callable[..., Tensor],
    x0: Tensor,
    labels: Tensor,
    time_sampler: TimeSampler,
    *,
    noise: Tensor | None = None,
    t: Tensor | None = None,
    force_drop: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TransportLoss:
    """One draw of the RAE flow-matching loss for clean latents ``x0`` (B, C, H, W) and labels (B,).

    ``noise`` and ``t`` (already shifted) replace the draws; ``force_drop`` (B,) bool pins label dropout and
    ``generator`` feeds every draw that is not given (noise, t, then the network's dropout). ``net`` is
    called as ``net(x_t, t, labels, **kw)`` with ``force_drop`` / ``generator`` only when they are set.
    Use ``.loss.mean()`` as the objective (official ``train.py``).
    """
    if noise is None:
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    if t is None:
        t = time_sampler(x0.shape[0], device=x0.device, generator=generator)
    elif t.shape != (x0.shape[0],):
        raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
    x_t = flow_interpolate(x0, noise, t.to(x0.dtype))
    kwargs = {k: v for k, v in (("force_drop", force_drop), ("generator", generator)) if v is not None}
    prediction = net(x_t, t, labels, **kwargs)
    target = flow_velocity_target(x0, noise)
    return TransportLoss(velocity_mse(prediction, target), x_t, t, noise, target, prediction)
