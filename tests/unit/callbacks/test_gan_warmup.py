"""`callbacks.GANWarmup`: the GAN phase follows the configured epochs / steps, is logged, checkpointed and
re-applied on resume before the first batch; bad arguments and modules without a GAN phase fail clearly."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from speedrun_diffusion.callbacks import GANWarmup
from speedrun_diffusion.lightning_modules.losses.gan import GANPhase
from tests.helpers.toy_recipe import ToyRecipe, toy_loader


class PhaseRecipe(ToyRecipe):
    """The toy regression with a GAN phase it records at every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.gan_phase = GANPhase()
        self.seen: list[tuple[int, GANPhase]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, GANPhase(**vars(self.gan_phase))))
        return super().training_step(batch, batch_idx)


def _trainer(tmp_path, steps: int, warmup: GANWarmup, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=[warmup], **kwargs)


def test_phase_at_compares_each_start():
    warmup = GANWarmup(lpips_start=0, disc_start=6, adversarial_start=8)
    assert warmup.phase_at(0) == GANPhase(True, False, False)
    assert warmup.phase_at(6) == GANPhase(True, True, False)
    assert warmup.phase_at(8) == GANPhase(True, True, True)
    assert GANWarmup().phase_at(0) == GANPhase()  # SpeedDiff: everything from the start


@pytest.mark.parametrize("kwargs", [{"unit": "batch"}, {"disc_start": -1}, {"lpips_start": 1.5}])
def test_bad_arguments_are_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GANWarmup(**kwargs)


def test_steps_switch_terms_on_and_log_them(tmp_path):
    module, warmup = PhaseRecipe(), GANWarmup(lpips_start=1, disc_start=3, adversarial_start=5, unit="step")
    trainer = _trainer(tmp_path, 7, warmup, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=toy_loader())
    for step, phase in module.seen:
        assert phase == GANPhase(step >= 1, step >= 3, step >= 5), step
    assert warmup.switched_at == {"lpips": 1, "disc": 3, "adversarial": 5}
    assert trainer.callback_metrics["gan/adversarial_on"] == 1.0


def test_epochs_switch_at_epoch_boundaries(tmp_path):
    module, warmup = PhaseRecipe(), GANWarmup(lpips_start=0, disc_start=1, adversarial_start=2, unit="epoch")
    loader = toy_loader()
    per_epoch = len(loader)
    _trainer(tmp_path, 3 * per_epoch, warmup, enable_checkpointing=False).fit(module, train_dataloaders=loader)
    for step, phase in module.seen:
        epoch = step // per_epoch
        assert phase == GANPhase(True, epoch >= 1, epoch >= 2), step


def test_state_resumes_and_is_applied_before_the_first_batch(tmp_path):
    warmup = GANWarmup(lpips_start=0, disc_start=2, adversarial_start=4, unit="step")
    trainer = _trainer(tmp_path, 3, warmup)
    trainer.fit(PhaseRecipe(), train_dataloaders=toy_loader())
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["callbacks"]["GANWarmup"]
    assert saved["phase"] == {"lpips": True, "disc": True, "adversarial": False}
    assert saved["switched_at"]["disc"] == 2

    class PhaseAtStart(L.Callback):
        """Records the module's phase when fit starts (after the checkpoint was restored)."""

        def on_train_start(self, trainer, pl_module):
            self.phase = GANPhase(**vars(pl_module.gan_phase))

    resumed_module, resumed, probe = PhaseRecipe(), GANWarmup(0, 2, 4, unit="step"), PhaseAtStart()
    resumed_module.gan_phase = GANPhase(False, False, False)  # must be overwritten by the restored state
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[resumed, probe])
    trainer.fit(resumed_module, train_dataloaders=toy_loader(), ckpt_path=ckpt)
    assert probe.phase == GANPhase(True, True, False)
    assert [s for s, _ in resumed_module.seen] == [3, 4, 5]
    for step, phase in resumed_module.seen:
        assert phase == GANPhase(True, True, step >= 4)
    assert resumed.switched_at == {"lpips": 0, "disc": 2, "adversarial": 4}


def test_module_without_gan_phase_is_refused(tmp_path):
    with pytest.raises(AttributeError, match="gan_phase"):
        _trainer(tmp_path, 1, GANWarmup(), enable_checkpointing=False).fit(ToyRecipe(), train_dataloaders=toy_loader())
