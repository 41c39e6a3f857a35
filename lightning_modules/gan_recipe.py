"""`GANRecipe`: the two-optimizer training step of the recipes with a discriminator (RAE stage 1, SpeedDiff).

Each training step is one update of the generator side, then — while ``gan_phase.disc`` (``callbacks.GANWarmup``)
— one update of the discriminator:

    L_G = compute_losses(batch)            → AdamW on everything trained but the discriminator
    L_D = discriminator_losses(batch)      → AdamW on the discriminator (its own lr / betas if configured)

under manual optimisation, each with its own scheduler stepped with its own updates, gradient-norm clipping at
``optimizer.grad_clip`` (Lightning's ``gradient_clip_val`` is unavailable under manual optimisation) and the
``nonfinite`` policy on both loss dicts and both gradients; a skipped generator update skips the discriminator's.
``trainer.global_step`` counts generator steps only.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.losses.gan import GANPhase
from speedrun_diffusion.lightning_modules.optimization import adamw, scheduled
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe

__all__ = ["GANRecipe"]


class GANRecipe(DiffusionRecipe):
    """A recipe trained with a discriminator: subclasses set ``self.discriminator`` (None: no GAN step) and
    implement ``compute_losses`` (the generator side, ``"loss"`` minimised) and ``discriminator_losses`` (``"d_loss"``
    minimised; None skips the step)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.discriminator: nn.Module | None = None  # the subclass sets it (a submodule, so not a class attribute)
        self.automatic_optimization = False
        self.gan_phase = GANPhase()  # every term on unless callbacks.GANWarmup switches some off

    def discriminator_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
        raise NotImplementedError

    def end_of_step(self) -> None:
        """Called after both updates of a training step (e.g. to drop tensors kept between them)."""

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Generator update, then (GAN phase "disc") the discriminator update; returns the detached generator loss
        (callbacks see it as ``outputs["loss"]``)."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        batch_size = len(batch["label"])
        if self.discriminator is not None:
            self.discriminator.zero_grad(set_to_none=True)  # the generator step must not leave gradients in D
        losses = self.compute_losses(batch)
        finite = self.losses_are_finite(losses)
        stepped = self.manual_optimizer_step(optimizers[0], losses["loss"] if finite else None, count=True)
        schedulers[0].step()
        self.log_losses(losses, "train", batch_size=batch_size)
        if self.gan_phase.disc and self.discriminator is not None:
            # a skipped generator step skips the discriminator's: it would train on (and LeCam would average) the
            # non-finite outputs; the no-gradient step keeps the two schedules in step
            d = self.discriminator_losses(batch) if stepped else None
            if d is not None or not stepped:
                finite = d is not None and self.losses_are_finite(d)
                self.manual_optimizer_step(optimizers[1], d["d_loss"] if finite else None, count=False)
                schedulers[1].step()
            if d is not None:
                self.log_dict({f"train/{k}": v.detach().float() for k, v in d.items()}, batch_size=batch_size)
        self.log_learning_rates()
        self.end_of_step()
        self.nonfinite_guard.end_step(self)  # after max_consecutive_skips skipped steps in a row: stop
        return losses["loss"].detach()

    def manual_optimizer_step(self, optimizer: Any, loss: Tensor | None, count: bool = True) -> bool:
        """Backward, check the gradients (``nonfinite`` policy), clip (``optimizer.grad_clip``) and step one
        optimizer under manual optimisation; True if it stepped with (finite) gradients.

        ``loss=None`` steps without gradients (a skipped update: Adam leaves parameters without a gradient
        untouched), and so does a non-finite gradient norm. ``count=False`` keeps the step out of
        ``trainer.global_step`` (a discriminator's update)."""
        optimizer.zero_grad(set_to_none=True)
        stepped = loss is not None
        if loss is not None:
            self.manual_backward(loss)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            stepped = self.gradients_are_finite(params)
            if not stepped:
                optimizer.zero_grad(set_to_none=True)
            clip = self.optimizer_config.grad_clip
            if clip is not None and stepped:
                self.clip_any_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        if count:
            optimizer.step()
        else:
            from lightning.pytorch.core.optimizer import do_nothing_closure

            self.trainer.strategy.optimizer_step(optimizer.optimizer, do_nothing_closure)
        return stepped

    def configure_optimizers(self) -> tuple[list, list]:
        """AdamW on everything trained but the discriminator, and one on the discriminator; the ``optimizer``
        group's schedule for each (per optimizer lr, so ``min_lr`` is the same fraction of both)."""
        cfg = self.optimizer_config
        disc = {id(p) for p in self.discriminator.parameters()} if self.discriminator is not None else set()
        optimizers = [adamw([p for p in self.trainable_parameters() if id(p) not in disc], cfg)]
        if self.discriminator is not None:
            optimizers.append(adamw([p for p in self.discriminator.parameters() if p.requires_grad], cfg,
                                    discriminator=True))
        return optimizers, [scheduled(opt, cfg, self._trainer) for opt in optimizers]
