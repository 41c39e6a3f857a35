"""`GANWarmup`: switches the terms of a tokenizer's GAN loss on at configured epochs or steps.

RAE stage 1 (App. E Table 12; reference/rae_stage1/README "Stage-1 training recipe") trains the decoder
with L1 + LPIPS from epoch 0, starts updating the discriminator at epoch 6 and adds the adversarial
generator loss at epoch 8; SpeedDiff (supp. A.2.2) has every term on from step 0. The recipe owns
``pl_module.gan_phase`` (``losses.gan.GANPhase``) and reads it in each training step; this callback sets
the three flags before every training batch from the current epoch (``unit="epoch"``) or optimizer step
(``unit="step"``, ``trainer.global_step``), logs them (``gan/lpips_on``, ``gan/disc_on``,
``gan/adversarial_on``) and records when each term switched on. The phase is a function of the
epoch / step, so a resumed run picks up exactly where it stopped; the checkpointed state (the phase and
the switch-on points) is re-applied to the module at the start of fit, before any batch.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, fields
from typing import Any, Literal

import lightning as L

from speedrun_diffusion.lightning_modules.losses.gan import GANPhase

log = logging.getLogger(__name__)
Unit = Literal["epoch", "step"]
TERMS = tuple(f.name for f in fields(GANPhase))  # lpips, disc, adversarial


class GANWarmup(L.Callback):
    """Sets ``pl_module.gan_phase`` = GANPhase(lpips ≥ lpips_start, disc ≥ disc_start,
    adversarial ≥ adversarial_start), comparing the epoch or the optimizer step (``unit``) with each start.

    Args:
        lpips_start / disc_start / adversarial_start: first epoch (or step) with the perceptual loss, the
            discriminator updates and the adversarial generator loss (RAE: 0 / 6 / 8 epochs).
        unit: "epoch" (``trainer.current_epoch``) or "step" (``trainer.global_step``).
    """

    def __init__(self, lpips_start: int = 0, disc_start: int = 0, adversarial_start: int = 0,
                 unit: Unit = "epoch") -> None:
        if unit not in ("epoch", "step"):
            raise ValueError(f"GANWarmup unit must be 'epoch' or 'step', got {unit!r}")
        starts = {"lpips_start": lpips_start, "disc_start": disc_start, "adversarial_start": adversarial_start}
        for name, value in starts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"GANWarmup {name} must be a non-negative integer, got {value!r}")
        self.starts = {"lpips": lpips_start, "disc": disc_start, "adversarial": adversarial_start}
        self.unit = unit
        self.phase: GANPhase | None = None  # the phase of the last training batch (None: not started)
        self.switched_at: dict[str, int | None] = {name: None for name in TERMS}  # global step of each switch-on

    def phase_at(self, now: int) -> GANPhase:
        """The phase at epoch (or step) ``now``."""
        return GANPhase(**{name: now >= self.starts[name] for name in TERMS})

    def now(self, trainer: L.Trainer) -> int:
        return trainer.current_epoch if self.unit == "epoch" else trainer.global_step

    @staticmethod
    def _check(pl_module: L.LightningModule) -> None:
        if not isinstance(getattr(pl_module, "gan_phase", None), GANPhase):
            raise AttributeError(f"GANWarmup needs `{type(pl_module).__name__}.gan_phase` (a losses.gan.GANPhase the "
                                 "recipe reads each step): this module has no GAN loss to warm up")

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        phase = self.phase if self.phase is not None else self.phase_at(self.now(trainer))
        pl_module.gan_phase = GANPhase(**asdict(phase))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(pl_module)
        self._apply(trainer, pl_module)  # the restored (or initial) phase before any batch

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)  # strategies that restore after setup load the state after on_fit_start

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        phase = self.phase_at(self.now(trainer))
        previous = self.phase or GANPhase(False, False, False)
        for name in TERMS:
            if getattr(phase, name) and not getattr(previous, name):
                self.switched_at[name] = trainer.global_step
                log.info("GANWarmup: %s switched on at %s %d (global step %d)", name, self.unit, self.now(trainer),
                         trainer.global_step)
        self.phase = phase
        pl_module.gan_phase = GANPhase(**asdict(phase))
        pl_module.log_dict({f"gan/{name}_on": float(getattr(phase, name)) for name in TERMS}, on_step=True,
                           on_epoch=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"phase": None if self.phase is None else asdict(self.phase), "switched_at": dict(self.switched_at), "starts": dict(self.starts),
                "unit": self.unit}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        saved = state_dict.get("phase")
        self.phase = None if saved is None else GANPhase(**{name: bool(saved[name]) for name in TERMS})
        self.switched_at.update(state_dict.get("switched_at", {}))


__all__ = ["GANWarmup"]
