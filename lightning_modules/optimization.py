"""The optimiser every recipe trains with: AdamW and its learning-rate schedule, as one typed argument group.

    optimizer:                      # model.init_args.optimizer in YAML; defaults are each recipe's paper values
      lr: 1.0e-4
      betas: [0.9, 0.999]
      warmup_steps: 0               # linear warm-up from lr/warmup_steps (or warmup_epochs, RAE Table 12)
      schedule: constant            # constant | cosine (to min_lr at the last step) | hold_linear (RAE App. F)
      implementation: auto          # auto | fused | foreach | for-loop: how torch.optim.AdamW runs its update

The papers train with AdamW (Adam at weight decay 0): SiT / SR-DiT / SpeedDiff constant 1e-4, SiD2 β₂ 0.99 and
ε 1e-12 after a 10k-step warm-up, RAE stage 1 a one-epoch warm-up then cosine 2e-4 → 2e-5, RAE stage 2 constant for
40 epochs then linear to 2e-5 at epoch 800. The GAN recipes' discriminator uses the same schedule with its own
``discriminator_lr`` / ``discriminator_betas`` when given.

``implementation`` picks torch's AdamW kernel, the same update computed three ways: "fused" (one kernel per dtype
and device over every tensor, ``torch.optim.AdamW(fused=True)``), "foreach" (multi-tensor ops) or "for-loop" (one
op per tensor). "auto" takes fused wherever torch has the kernel for the parameters at hand (CPU, CUDA, ...; FSDP2
DTensor shards included, whose local shards it updates), else foreach where torch has those kernels, else the loop.
At batch 2 of SR-DiT-B/1 the per-tensor loop was most of a CPU training step (docs/benchmarks.md); fused and loop
agree to float rounding (``tests/unit/recipes/test_optimization.py``). ``clip_grads_to_norm_`` clips the gradients
by a global norm already computed (the non-finite check's), as ``clip_grad_norm_`` would.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["AdamWImplementation", "LRSchedule", "OptimizerConfig", "adamw", "adamw_implementation",
           "clip_grads_to_norm_", "hold_linear_factor", "lr_factor", "scheduled", "steps_per_epoch",
           "warmup_schedule_factor"]

LRSchedule = Literal["constant", "cosine", "hold_linear"]
AdamWImplementation = Literal["auto", "fused", "foreach", "for-loop"]
IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its schedule (a recipe's ``optimizer`` argument group).

    Args:
        lr, betas, weight_decay, eps: AdamW's.
        warmup_steps: linear warm-up over the first steps (0: none); ``warmup_epochs`` overrides it in epochs.
        schedule: "constant"; "cosine" from lr to ``min_lr`` at the last training step; "hold_linear" (RAE
            App. F): constant for ``hold_epochs``, linear to ``min_lr`` at ``decay_end_epoch``, constant after.
        grad_clip: gradient-norm clipping of the manual-optimisation (GAN) recipes, per optimizer (the others
            clip with ``trainer.gradient_clip_val``, which Lightning forbids under manual optimisation).
        discriminator_lr / discriminator_betas: the GAN recipes' discriminator optimizer (None: as above).
        implementation: AdamW's kernel — "fused", "foreach", "for-loop", or "auto": fused where torch supports it
            for the parameters (``adamw_implementation``); the same update up to float rounding.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 0
    warmup_epochs: float | None = None
    schedule: LRSchedule = "constant"
    min_lr: float = 0.0
    hold_epochs: float = 40.0
    decay_end_epoch: float = 800.0
    grad_clip: float | None = None
    discriminator_lr: float | None = None
    discriminator_betas: tuple[float, float] | None = None
    implementation: AdamWImplementation = "auto"

    def __post_init__(self) -> None:
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"optimizer.implementation must be one of {list(IMPLEMENTATIONS)}, got "
                             f"{self.implementation!r}")
        if self.schedule not in ("constant", "cosine", "hold_linear"):
            raise ValueError(f"optimizer.schedule must be 'constant', 'cosine' or 'hold_linear', got {self.schedule!r}")
        for name in ("lr", "weight_decay", "eps", "warmup_steps", "min_lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"optimizer.{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"optimizer.grad_clip must be > 0 or null, got {self.grad_clip}")
        for name in ("betas", "discriminator_betas"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 2 or not all(0.0 <= b < 1.0 for b in value):
                    raise ValueError(f"optimizer.{name} must be two numbers in [0, 1), got {value}")
                object.__setattr__(self, name, (float(value[0]), float(value[1])))


def adamw_implementation(params: Iterable[torch.Tensor], requested: str = "auto") -> str:
    """The AdamW kernel for ``params``: ``requested`` unless it is "auto", which resolves to "fused" when every
    parameter is floating point on a device with torch's fused kernels (CPU, CUDA, MPS, XPU, ...; a DTensor shard
    counts by its local device), else "foreach" when torch has multi-tensor kernels for every device (CUDA, XPU),
    else "for-loop". (torch's own default is foreach on CUDA and the for-loop elsewhere: on CPU, where fused AdamW
    was 3.5x faster than the loop for SR-DiT-B/1's 140 M parameters, it never picks fused by itself.)"""
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"AdamW implementation must be one of {list(IMPLEMENTATIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices, _get_fused_kernels_supported_devices

    params = list(params)
    if not params:
        return "for-loop"
    devices = {p.device.type for p in params}
    if all(torch.is_floating_point(p) for p in params) and devices <= set(_get_fused_kernels_supported_devices()):
        return "fused"
    if devices <= set(_get_foreach_kernels_supported_devices()):
        return "foreach"
    return "for-loop"


def adamw(params: Iterable[nn.Parameter], cfg: OptimizerConfig, discriminator: bool = False) -> torch.optim.AdamW:
    """AdamW over ``params`` with ``cfg``'s settings (the discriminator's lr / betas when ``discriminator``), run by
    the kernel ``cfg.implementation`` names ("auto": ``adamw_implementation``)."""
    params = list(params)
    lr = cfg.discriminator_lr if discriminator and cfg.discriminator_lr is not None else cfg.lr
    betas = cfg.discriminator_betas if discriminator and cfg.discriminator_betas is not None else cfg.betas
    kernel = adamw_implementation(params, cfg.implementation)
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[kernel]
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=cfg.weight_decay, eps=cfg.eps, **flags)


def clip_grads_to_norm_(parameters: Iterable[nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Gradient-norm clipping given the global norm ``total_norm`` of the gradients of ``parameters``: torch's
    ``clip_grads_with_norm_`` (the second half of ``clip_grad_norm_``: g ← g · min(1, max_norm / (‖g‖ + 1e-6))),
    except that it reads the coefficient first and leaves the gradients alone when it is 1 — the same gradients bit
    for bit (x · 1.0 = x), without a pass over all of them. The norm is on the host already when the non-finite
    check has just looked at it, so that costs no extra device wait."""
    if bool(max_norm / (total_norm + 1e-6) >= 1.0):  # torch's coefficient, before its clamp to 1
        return
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm)


def warmup_schedule_factor(step: int, warmup_steps: int, total_steps: int | None, schedule: str,
                           min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, then constant or a cosine to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or not total_steps or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def hold_linear_factor(step: int, hold_steps: int, end_steps: int, min_lr_ratio: float, warmup_steps: int = 0) -> float:
    """LR multiplier of RAE App. F for DiT^DH: constant for ``hold_steps`` (40 epochs), then linear to
    ``min_lr_ratio`` (2e-5 / 2e-4) at ``end_steps`` (800 epochs), constant after (official ``linear`` schedule
    with ``warmup_from_zero: false``); an optional linear warm-up from zero over ``warmup_steps`` first."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if step < hold_steps:
        return 1.0
    if end_steps <= hold_steps:
        return min_lr_ratio
    progress = min(1.0, (step - hold_steps) / (end_steps - hold_steps))
    return 1.0 + (min_lr_ratio - 1.0) * progress


def steps_per_epoch(trainer: Any) -> int:
    """Optimizer steps in one training epoch (``trainer.num_training_batches`` / gradient accumulation)."""
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()  # as estimated_stepping_batches does (it skips this when max_epochs is -1)
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ValueError("epoch-based LR settings need a sized training loader: give the schedule in steps")
    return max(1, int(batches) // max(1, trainer.accumulate_grad_batches))


def lr_factor(cfg: OptimizerConfig, lr: float, trainer: Any | None) -> Callable[[int], float]:
    """The ``LambdaLR`` multiplier of ``cfg``'s schedule for an optimizer at base ``lr`` (epochs and the total
    step count come from ``trainer``; without one, epoch-based settings count one step per epoch)."""
    epoch = steps_per_epoch(trainer) if trainer is not None and (
        cfg.warmup_epochs is not None or cfg.schedule == "hold_linear") else 1
    warmup = int(round(cfg.warmup_epochs * epoch)) if cfg.warmup_epochs is not None else cfg.warmup_steps
    ratio = cfg.min_lr / lr if lr > 0 else 0.0
    if cfg.schedule == "hold_linear":
        hold, end = int(round(cfg.hold_epochs * epoch)), int(round(cfg.decay_end_epoch * epoch))
        return lambda step: hold_linear_factor(step, hold, end, ratio, warmup)
    total = int(trainer.estimated_stepping_batches) if trainer is not None and cfg.schedule == "cosine" else None
    return lambda step: warmup_schedule_factor(step, warmup, total, cfg.schedule, ratio)


def scheduled(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, trainer: Any | None) -> dict[str, Any]:
    """Lightning's scheduler entry for ``optimizer``: ``cfg``'s schedule stepped every optimizer step."""
    factor = lr_factor(cfg, optimizer.param_groups[0]["lr"], trainer)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
