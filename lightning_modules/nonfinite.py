"""The non-finite policy of training: what a recipe does when a loss term or a gradient is NaN or infinite.

``nonfinite: {policy: skip}`` (default) leaves weights and optimizer state untouched for that step, warns naming the
term(s) / parameter(s) and the step, counts it (``train/nonfinite_steps``, checkpointed) and trains on; ``policy:
raise`` stops with :class:`NonFiniteLossError` naming them. Two checks per step: every loss term (before backward)
and the global gradient norm (after backward, before the optimizer step: a NaN gradient with a finite loss would
otherwise reach AdamW and make every weight NaN). Each decision is reduced over ranks (one rank non-finite → every
rank skips), so data-parallel replicas never disagree on a step.

``skip`` cannot train on forever without recovering: after ``max_consecutive_skips`` training steps in a row with a
skipped update it stops with :class:`TooManyNonFiniteStepsError` (the last checkpoint, written before them, holds
finite state). And no checkpoint is written with a non-finite tensor (:func:`check_checkpoint_finite`), so a run that
goes NaN some other way stops with :class:`NonFiniteCheckpointError` naming the tensor instead of overwriting
``last.ckpt`` with it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["NonFiniteCheckpointError", "NonFiniteConfig", "NonFiniteGuard", "NonFiniteLossError", "NonFinitePolicy",
           "TooManyNonFiniteStepsError", "check_checkpoint_finite"]

log = logging.getLogger(__name__)

NonFinitePolicy = Literal["skip", "raise"]


class NonFiniteLossError(FloatingPointError):
    """A training loss term or gradient is NaN or infinite and the recipe's policy is ``raise``."""


class TooManyNonFiniteStepsError(NonFiniteLossError):
    """``max_consecutive_skips`` training steps in a row were skipped for non-finite losses or gradients."""


class NonFiniteCheckpointError(NonFiniteLossError):
    """A checkpoint would hold a NaN or infinite tensor (weights, optimizer state, EMA, buffers); it is not written."""


@dataclass(frozen=True)
class NonFiniteConfig:
    """A recipe's ``nonfinite`` argument group: ``policy`` "skip" (the step leaves every state untouched) or
    "raise" (:class:`NonFiniteLossError`); under "skip", ``max_consecutive_skips`` steps in a row with a skipped
    update stop the run (:class:`TooManyNonFiniteStepsError`; None: never)."""

    policy: NonFinitePolicy = "skip"
    max_consecutive_skips: int | None = 20

    def __post_init__(self) -> None:
        if self.policy not in ("skip", "raise"):
            raise ValueError(f"nonfinite.policy must be 'skip' or 'raise', got {self.policy!r}")
        limit = self.max_consecutive_skips
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"nonfinite.max_consecutive_skips must be a positive integer or null, got {limit!r}")


def _local(tensor: Tensor) -> Tensor:
    """This rank's part of a (possibly sharded FSDP2 DTensor) tensor: finiteness is decided locally, then reduced."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class NonFiniteGuard:
    """Applies a :class:`NonFiniteConfig` to the loss terms and gradients of each step of one LightningModule,
    counts the skipped updates (``skipped``, restored from checkpoints by the recipe) and the training steps in a row
    with one (``consecutive``)."""

    def __init__(self, cfg: NonFiniteConfig) -> None:
        self.cfg = cfg
        self.skipped = 0
        self.consecutive = 0
        self.step_skipped = False  # an update of the current training step was skipped
        self._norm: tuple[list[int], torch.Tensor] | None = None  # the last finite check's gradients and norm

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
        self._skip(module, f"non-finite loss term(s) {terms}" if terms else "a non-finite loss term on another rank")
        return False

    def check_gradients(self, module: Any, parameters: Iterable[torch.nn.Parameter]) -> bool:
        """True if the global norm of the gradients of ``parameters`` is finite on every rank (one fused reduction
        and one host sync); otherwise raise or (skip) warn naming up to three parameters, count and return False —
        the caller then drops the gradients, so the optimizer leaves parameters and moments untouched."""
        params = [p for p in parameters if p.grad is not None]
        grads = [_local(p.grad) for p in params]
        norm = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False) if grads else None
        bad = norm is not None and not bool(torch.isfinite(norm))
        trainer = module._trainer
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self._norm = ([id(g) for g in grads], norm) if norm is not None else None
            return True
        names = {id(p): n for n, p in module.named_parameters()}
        broken = [names.get(id(p), "?") for p, g in zip(params, grads) if not bool(torch.isfinite(g).all())]
        listed = ", ".join(broken[:3]) + (f" and {len(broken) - 3} more" if len(broken) > 3 else "")
        self._skip(module, f"non-finite gradient(s) of {listed} (global norm {float(norm)})" if broken
                   else "a non-finite gradient on another rank")
        return False

    def take_gradient_norm(self, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
        """The global norm ``check_gradients`` computed, if it was computed over exactly the current gradients of
        ``parameters`` (then clipping need not compute it again); None otherwise. Each norm is handed out once."""
        stored, self._norm = self._norm, None
        if stored is None:
            return None
        ids, norm = stored
        return norm if [id(p.grad) for p in parameters if p.grad is not None] == ids else None

    def _skip(self, module: Any, what: str) -> None:
        """Raise (policy "raise") or warn, count the skipped update and mark the current step as skipped."""
        trainer = module._trainer
        where = "this step"
        if trainer is not None:
            where = (f"global step {module.global_step} (epoch {module.current_epoch}, batch index "
                     f"{trainer.fit_loop.epoch_loop.batch_idx})")
        name = type(module).__name__
        if self.cfg.policy == "raise":
            raise NonFiniteLossError(
                f"{name}: {what} at {where}. Lower the learning rate, enable gradient clipping "
                "(trainer.gradient_clip_val) or set model.init_args.nonfinite.policy: skip to skip such steps")
        self.skipped += 1
        self.step_skipped = True
        log.warning("%s: %s at %s; step skipped (%d skipped so far)", name, what, where, self.skipped)

    def end_step(self, module: Any) -> None:
        """Close a training step (after its optimizer updates): count it among the consecutive skipped steps or reset
        that count; stop with :class:`TooManyNonFiniteStepsError` once ``max_consecutive_skips`` is reached."""
        if not self.step_skipped:
            self.consecutive = 0
            return
        self.step_skipped = False
        self.consecutive += 1
        limit = self.cfg.max_consecutive_skips
        if limit is not None and self.consecutive >= limit:
            raise TooManyNonFiniteStepsError(
                f"{type(module).__name__}: {self.consecutive} training steps in a row skipped for non-finite losses "
                f"or gradients (up to global step {module.global_step}); stopping, the last checkpoint is left as it "
                "was. Lower the learning rate, enable gradient clipping, resume from an earlier checkpoint, or raise "
                "model.init_args.nonfinite.max_consecutive_skips")


def _tensors(value: Any, path: str) -> Iterable[tuple[str, Tensor]]:
    """(dotted path, tensor) of every floating tensor inside nested dicts / lists / tuples."""
    if torch.is_tensor(value):
        if value.is_floating_point() or value.is_complex():
            yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}[{i}]")


def check_checkpoint_finite(checkpoint: Mapping[str, Any], trainer: Any = None, who: str = "checkpoint") -> None:
    """Raise :class:`NonFiniteCheckpointError` naming a tensor if ``checkpoint`` holds a NaN or infinite one among its
    weights and buffers (``state_dict``: GAN buffers such as LeCam's anchors included), optimizer state
    (``optimizer_states``) and EMA state (``callbacks.EMA*``; other callbacks may hold an inf on purpose, e.g. a
    ``ModelCheckpoint``'s ``kth_value``): one host sync per device, the decision reduced over ranks (sharded tensors
    checked locally)."""
    ema = {k: v for k, v in (checkpoint.get("callbacks") or {}).items() if str(k).startswith("EMA")}
    found = [(n, _local(t)) for key, value in (("state_dict", checkpoint.get("state_dict")),
                                               ("optimizer_states", checkpoint.get("optimizer_states")),
                                               ("callbacks", ema))
             for n, t in _tensors(value, key)]
    by_device: dict[torch.device, list[Tensor]] = {}
    for _, t in found:
        by_device.setdefault(t.device, []).append(torch.isfinite(t).all())
    bad = not all(bool(torch.stack(flags).all()) for flags in by_device.values())
    if trainer is not None and trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if not bad:
        return
    names = [n for n, t in found if not bool(torch.isfinite(t).all())]  # the slow path, only on failure
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise NonFiniteCheckpointError(
        f"{who}: not saving a checkpoint with non-finite tensor(s) {listed if names else 'on another rank'}; the "
        "previous checkpoint is kept. Resume from it with a lower learning rate or gradient clipping")
