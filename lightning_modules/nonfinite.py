"""The non-finite policy of training: what a recipe does when a loss term is NaN or infinite.

``nonfinite: {policy: skip}`` (default) leaves weights and optimizer state untouched for that step, warns naming the
term(s) and the step, counts it (``train/nonfinite_steps``, checkpointed) and trains on; ``policy: raise`` stops
with :class:`NonFiniteLossError` naming the term(s) and the step. The decision is reduced over ranks (one rank
non-finite → every rank skips), so data-parallel replicas never disagree on a step.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["NonFiniteConfig", "NonFiniteGuard", "NonFiniteLossError", "NonFinitePolicy"]

log = logging.getLogger(__name__)

NonFinitePolicy = Literal["skip", "raise"]


class NonFiniteLossError(FloatingPointError):
    """A training loss term is NaN or infinite and the recipe's policy is ``raise``."""


@dataclass(frozen=True)
class NonFiniteConfig:
    """A recipe's ``nonfinite`` argument group: ``policy`` "skip" (the step leaves every state untouched) or
    "raise" (:class:`NonFiniteLossError`)."""

    policy: NonFinitePolicy = "skip"

    def __post_init__(self) -> None:
        if self.policy not in ("skip", "raise"):
            raise ValueError(f"nonfinite.policy must be 'skip' or 'raise', got {self.policy!r}")


class NonFiniteGuard:
    """Applies a :class:`NonFiniteConfig` to the loss terms of each step of one LightningModule and counts the
    skipped steps (``skipped``, restored from checkpoints by the recipe)."""

    def __init__(self, cfg: NonFiniteConfig) -> None:
        self.cfg = cfg
        self.skipped = 0

    def check(self, module: Any, losses: Mapping[str, Tensor]) -> bool:
        """True if every floating loss term is finite on every rank; otherwise raise or (skip) warn, count the
        step and return False. ``module`` is the LightningModule (trainer, logging, step)."""
        names = [k for k, v in losses.items() if torch.is_tensor(v) and v.is_floating_point()]
        finite = torch.stack([torch.isfinite(losses[k].detach()).all() for k in names]) if names else None
        bad = finite is not None and not bool(finite.all())  # one host sync for all terms
        trainer = module._trainer
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if trainer is not None:
            module.log("train/nonfinite_steps", float(self.skipped + int(bad)), prog_bar=False, batch_size=1)
        if not bad:
            return True
        flags = finite.tolist() if finite is not None else []
        terms = ", ".join(f"{k}={losses[k].detach().float().mean().item()}" for k, ok in zip(names, flags) if not ok)
        where = "this step"
        if trainer is not None:
            where = (f"global step {module.global_step} (epoch {module.current_epoch}, batch index "
                     f"{trainer.fit_loop.epoch_loop.batch_idx})")
        what = f"non-finite loss term(s) {terms}" if terms else "a non-finite loss term on another rank"
        name = type(module).__name__
        if self.cfg.policy == "raise":
            raise NonFiniteLossError(
                f"{name}: {what} at {where}. Lower the learning rate, enable gradient clipping "
                "(trainer.gradient_clip_val) or set model.init_args.nonfinite.policy: skip to skip such steps")
        self.skipped += 1
        log.warning("%s: %s at %s; step skipped (%d skipped so far)", name, what, where, self.skipped)
        return False
