"""The SR-DiT training objective (SR-DiT Sec. 3 / eq. 8; official ``loss.py`` ``SILoss`` + train.py weights).

    L = L_vel + 0.5·L_REPA + 0.03·L_cls + 0.05·L_CFM

For clean latents x0 (INVAE latents × 0.3099), the DINOv2 targets zs = [cls; patches] and the clean
REG token cls (= zs[:, 0]): t ~ U(0, 1) per sample, shifted t' = s·t/(1 + (s − 1)·t) with
s = √(C·H·W / 4096) (eq. 3), ε and ε_cls ~ N(0, I), x_t = (1 − t')x0 + t'ε, cls_t = (1 − t')cls + t'ε_cls;
the network runs in training mode (label dropout, SPRINT routing and path drop inside) and returns
(v̂, [ẑ], v̂_cls). Terms (reference/srdit/README "Loss"):

* ``velocity`` — batch mean of the per-sample MSE to ε − x0 (flow_matching.velocity_mse);
* ``repa``     — negative cosine between ẑ and zs over all T tokens (repa.repa_loss);
* ``cls``      — MSE of the cls velocity to ε_cls − cls (reg.cls_velocity_loss);
* ``cfm``      — −MSE to the batch rolled by one (contrastive_flow; the paper says random shuffle);
* ``cfm_cls``  — the cls analogue, computed (and logged) as the official code does but weighted 0.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion import (
    TimeSampler,
    dimension_shift,
    flow_interpolate,
    flow_velocity_target,
)
from speedrun_diffusion.lightning_modules.losses.contrastive_flow import contrastive_flow_loss
from speedrun_diffusion.lightning_modules.losses.flow_matching import velocity_mse
from speedrun_diffusion.lightning_modules.losses.reg import cls_velocity_loss
from speedrun_diffusion.lightning_modules.losses.repa import repa_loss


class SRDiTLoss:
    """Callable ``(net, x0, y, repa_targets, cls_target, …) -> {"loss", "velocity", "repa", "cls", "cfm", "cfm_cls"}``.

    Args:
        velocity_weight, repa_weight, cls_weight, cfm_weight, cfm_cls_weight: term weights (paper and
            train.sh: 1 / 0.5 / 0.03 / 0.05; the cls CFM term is unused, 0).
        shift: time shift s; None derives s = √(C·H·W / shift_base) from x0 at every call.
        shift_base: the base dimension (4096; the reference vectors use 64 for their tiny latents).

    Randomness (DESIGN): ``t`` (already shifted, (B,)), ``noise``, ``noise_cls`` and the network's
    own draws (``net_kwargs`` such as ``force_drop``, ``ids_keep``, ``path_drop``) can be pinned;
    otherwise they are drawn from ``generator`` in the official order t, ε, ε_cls, then the network's.
    """

    def __init__(
        self,
        velocity_weight: float = 1.0,
        repa_weight: float = 0.5,
        cls_weight: float = 0.03,
        cfm_weight: float = 0.05,
        cfm_cls_weight: float = 0.0,
        shift: float | None = None,
        shift_base: int = 4096,
    ) -> None:
        self.weights = {
            "velocity": float(velocity_weight),
            "repa": float(repa_weight),
            "cls": float(cls_weight),
            "cfm": float(cfm_weight),
            "cfm_cls": float(cfm_cls_weight),
        }
        self.shift = shift
        self.shift_base = shift_base

    def time_shift(self, x0: Tensor) -> float:
        """s of eq. 3: the fixed ``shift`` or √(C·H·W / shift_base)."""
        return self.shift if self.shift is not None else dimension_shift(x0[0].numel(), self.shift_base)

    def __call__(
        self,
        net: Callable[..., Sequence],
        x0: Tensor,
        y: Tensor,
        repa_targets: Sequence[Tensor] | Tensor,
        cls_target: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        noise_cls: Tensor | None = None,
        generator: torch.Generator | None = None,
        **net_kwargs,
    ) -> dict[str, Tensor]:
        b = x0.shape[0]
        if t is None:
            t = TimeSampler("uniform", shift=self.time_shift(x0))(b, device=x0.device, generator=generator)
        t = t.reshape(b).to(device=x0.device, dtype=torch.float32)  # official: shift in float32, then cast
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        if noise_cls is None:
            noise_cls = torch.randn(cls_target.shape, device=x0.device, dtype=cls_target.dtype, generator=generator)
        x_t = flow_interpolate(x0, noise, t.to(x0.dtype))
        cls_t = flow_interpolate(cls_target, noise_cls, t.to(cls_target.dtype))
        if generator is not None:
            net_kwargs.setdefault("generator", generator)
        v_hat, zs_hat, cls_hat = net(x_t, t.to(x0.dtype), y, cls_token=cls_t, **net_kwargs)
        v = flow_velocity_target(x0, noise)
        v_cls = flow_velocity_target(cls_target, noise_cls)
        terms = {
            "velocity": velocity_mse(v_hat, v).mean(),
            "repa": repa_loss(zs_hat, repa_targets),
            "cls": cls_velocity_loss(cls_hat, v_cls),
            "cfm": contrastive_flow_loss(v_hat, v),
            "cfm_cls": contrastive_flow_loss(cls_hat, v_cls),
        }
        total = sum(self.weights[k] * terms[k] for k in terms if self.weights[k] != 0.0)
        return {"loss": total, **terms}


__all__ = ["SRDiTLoss"]
