"""The non-finite policy beyond the loss (issue 21, item 2): NaN gradients of a finite loss are skipped (or raise),
``skip`` stops after ``max_consecutive_skips`` steps in a row, no checkpoint is written with a non-finite weight or
EMA shadow (``last.ckpt`` keeps the last good state), and the GAN recipes skip the discriminator's update with the
generator's, so LeCam's anchors only ever average finite logits."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from speedrun_diffusion.callbacks import EMA
from speedrun_diffusion.callbacks.checkpointing import AtomicModelCheckpoint
from speedrun_diffusion.lightning_modules.gan_recipe import GANRecipe
from speedrun_diffusion.lightning_modules.losses.gan import LeCamRegularizer
from speedrun_diffusion.lightning_modules.nonfinite import (
    NonFiniteCheckpointError,
    NonFiniteConfig,
    NonFiniteGuard,
    NonFiniteLossError,
    TooManyNonFiniteStepsError,
)
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from tests.helpers.toy_recipe import RecordTrajectory, ToyRecipe, toy_loader

NONFINITE_LOG = "speedrun_diffusion.lightning_modules.nonfinite"


def nan_gradient(weight: torch.Tensor) -> torch.Tensor:
    """A term whose value is 0 (finite) and whose gradient w.r.t. ``weight`` is NaN: d√(0·w)/dw = 0·∞."""
    return torch.sqrt(weight * 0.0).sum()


class NaNGradientAt(ToyRecipe):
    """The toy regression; at the global steps in ``steps`` its loss stays finite but the head's gradient is NaN."""

    def __init__(self, steps: set[int], **nonfinite) -> None:
        super().__init__()
        self.steps = steps
        self.nonfinite_guard = NonFiniteGuard(NonFiniteConfig(**nonfinite))

    def compute_losses(self, batch, generator=None):
        losses = super().compute_losses(batch)
        if self.training and self.global_step in self.steps:
            losses["loss"] = losses["loss"] + nan_gradient(self.net.head.weight)
        return losses


def _trainer(tmp_path: Path, steps: int, *callbacks: L.Callback, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
                     enable_checkpointing=any(isinstance(c, AtomicModelCheckpoint) for c in callbacks), **kwargs)


def _all_finite(tree) -> bool:
    if torch.is_tensor(tree):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_all_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_all_finite(v) for v in tree)
    return True


@pytest.mark.parametrize("clip", [None, 1.0])
def test_nan_gradient_of_a_finite_loss_is_skipped_and_counted(tmp_path, caplog, clip):
    recorder, module = RecordTrajectory(), NaNGradientAt({2})
    trainer = _trainer(tmp_path, 4, recorder, gradient_clip_val=clip)
    with caplog.at_level(logging.WARNING, logger=NONFINITE_LOG):
        trainer.fit(module, train_dataloaders=toy_loader())
    traj = recorder.trajectory
    assert trainer.global_step == 4 and module.nonfinite_steps == 1
    for name in traj[0]:
        assert torch.isfinite(traj[4][name]).all(), name
        assert torch.equal(traj[3][name], traj[2][name]), name  # step 2: no update
        assert not torch.equal(traj[4][name], traj[3][name]) or "offset" in name  # the next step trains
    assert _all_finite(trainer.optimizers[0].state_dict()["state"])  # AdamW's moments never saw the NaN
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "non-finite gradient(s) of net.head.weight" in message and "global step 2" in message


def test_nan_gradient_under_policy_raise_names_the_parameter_and_step(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient\(s\) of net.head.weight .*global step 1"):
        _trainer(tmp_path, 4).fit(NaNGradientAt({1}, policy="raise"), train_dataloaders=toy_loader())


def test_skip_stops_after_max_consecutive_skips_and_keeps_the_last_good_checkpoint(tmp_path):
    checkpoint = AtomicModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=2, save_top_k=0)
    module = NaNGradientAt(set(range(3, 100)), max_consecutive_skips=4)
    trainer = _trainer(tmp_path, 50, checkpoint)
    with pytest.raises(TooManyNonFiniteStepsError, match=r"4 training steps in a row skipped.*max_consecutive_skips"):
        trainer.fit(module, train_dataloaders=toy_loader())
    assert trainer.global_step == 6  # steps 3, 4, 5 and 6 skipped: stopped in the 4th
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and saved["nonfinite_steps"] == 3  # written after step 5, finite
    assert _all_finite(saved["state_dict"]) and _all_finite(saved["optimizer_states"])


def test_one_good_step_resets_the_consecutive_count(tmp_path):
    module = NaNGradientAt({1, 2, 4, 5, 7, 8}, max_consecutive_skips=3)
    _trainer(tmp_path, 10).fit(module, train_dataloaders=toy_loader())
    assert module.nonfinite_steps == 6 and module.nonfinite_guard.consecutive == 0


@pytest.mark.parametrize("limit", [0, -2, 1.5, True, "20"])
def test_max_consecutive_skips_is_validated(limit):
    with pytest.raises(ValueError, match="nonfinite.max_consecutive_skips"):
        NonFiniteConfig(max_consecutive_skips=limit)
    assert NonFiniteConfig().max_consecutive_skips == 20 and NonFiniteConfig(max_consecutive_skips=None)


class PoisonAt(L.Callback):
    """At global step ``step``, before the batch, write a NaN into the head's weight or the EMA shadow."""

    def __init__(self, step: int, where: str) -> None:
        self.step, self.where = step, where

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        if self.where == "weight":
            pl_module.net.head.weight[0, 0] = float("nan")
        else:
            EMA.find(trainer)._shadow["head.bias"].fill_(float("inf"))


@pytest.mark.parametrize("where, named", [("weight", "state_dict.net.head.weight"),
                                          ("ema", "callbacks.EMA.*shadow.head.bias")])
def test_a_checkpoint_with_a_nonfinite_tensor_is_refused_and_last_ckpt_kept(tmp_path, where, named):
    checkpoint = AtomicModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = _trainer(tmp_path, 6, EMA(decay=0.9), PoisonAt(3, where), checkpoint)
    with pytest.raises(NonFiniteCheckpointError, match=rf"ToyRecipe: not saving a checkpoint with non-finite "
                                                       rf"tensor\(s\) {named}"):
        trainer.fit(ToyRecipe(), train_dataloaders=toy_loader())
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    ema = next(v for k, v in saved["callbacks"].items() if k.startswith("EMA"))
    assert saved["global_step"] == 3  # the state before the poison
    assert _all_finite(saved["state_dict"]) and _all_finite(saved["optimizer_states"]) and _all_finite(ema)
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["last.ckpt"]  # no partial file left


# ---------------------------------------------------------------- GAN recipes
class ToyGAN(GANRecipe):
    """A linear generator trained to a target with a LeCam-regularised linear discriminator; at ``bad_steps`` the
    generator's output (and so its loss) is NaN, at ``nan_loss_steps`` its loss only (the output the discriminator
    would see is finite), at ``nan_grad_steps`` its loss is finite with a NaN gradient."""

    num_classes = 2

    def __init__(self, bad_steps=(), nan_loss_steps=(), nan_grad_steps=()) -> None:
        super().__init__(optimizer=OptimizerConfig(lr=0.05))
        torch.manual_seed(0)
        self.net = nn.Linear(6, 6)
        self.discriminator = nn.Linear(6, 1)
        self.lecam = LeCamRegularizer(decay=0.5)
        self.bad_steps, self.nan_loss_steps = set(bad_steps), set(nan_loss_steps)
        self.nan_grad_steps = set(nan_grad_steps)
        self._fake = None

    def compute_losses(self, batch, generator=None):
        fake = self.net(batch["image"])
        if self.global_step in self.bad_steps:
            fake = fake + float("nan")
        self._fake = fake.detach()
        loss = (fake - batch["image"]).pow(2).mean() - 0.1 * self.discriminator(fake).mean()
        if self.global_step in self.nan_grad_steps:
            loss = loss + nan_gradient(self.net.weight)
        return {"loss": loss, "aux": torch.tensor(float("nan") if self.global_step in self.nan_loss_steps else 0.0)}

    def discriminator_losses(self, batch):
        real, fake = self.discriminator(batch["image"]), self.discriminator(self._fake)
        d_loss = (1 - real).relu().mean() + (1 + fake).relu().mean() + 0.1 * self.lecam(real, fake)
        return {"d_loss": d_loss}

    def end_of_step(self) -> None:
        self._fake = None


class RecordGAN(L.Callback):
    """Generator and discriminator weights and LeCam's buffers after every training step."""

    def __init__(self) -> None:
        self.states = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


@pytest.mark.parametrize("fault", ["bad_steps", "nan_loss_steps", "nan_grad_steps"])
def test_gan_skips_the_discriminator_with_a_skipped_generator_step_and_lecam_stays_finite(tmp_path, fault):
    recorder, module = RecordGAN(), ToyGAN(**{fault: [2]})
    trainer = _trainer(tmp_path, 4, recorder)
    trainer.fit(module, train_dataloaders=toy_loader())
    states = recorder.states  # states[i]: after the step of global step i
    assert module.nonfinite_steps == 1 and trainer.global_step == 4
    for key in states[2]:
        assert torch.equal(states[2][key], states[1][key]), key  # neither update, no LeCam update, at step 2
        assert torch.isfinite(states[3][key].float()).all(), key
    assert int(states[3]["lecam.num_updates"]) == 3  # steps 0, 1 and 3
    assert not torch.equal(states[3]["discriminator.weight"], states[2]["discriminator.weight"])


def test_lecam_update_ignores_nonfinite_logits():
    lecam = LeCamRegularizer(decay=0.9)
    lecam.update(torch.full((4,), 2.0), torch.full((4,), -1.0))
    before = {k: v.clone() for k, v in lecam.state_dict().items()}
    lecam.update(torch.tensor([1.0, float("nan")]), torch.full((2,), -1.0))
    lecam.update(torch.full((2,), 1.0), torch.tensor([float("inf"), 0.0]))
    for key, value in lecam.state_dict().items():
        assert torch.equal(value, before[key]), key
    lecam.update(torch.full((4,), 2.0), torch.full((4,), -1.0))
    assert int(lecam.num_updates) == 2 and torch.isclose(lecam.ema_real, torch.tensor(0.2 * 0.9 + 0.2))
