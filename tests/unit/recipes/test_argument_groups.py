"""The recipes' typed argument groups (optimizer, sharding, nonfinite, sampling): a partial mapping keeps the recipe's
paper defaults for the fields it leaves out, bad fields and classes are refused by name, checkpoints store the whole
groups as plain containers and rebuild the same recipe, and the command line reaches single fields."""
from __future__ import annotations

import sys

import lightning as L
import pytest
import torch

from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules import SiD2, SiT
from speedrun_diffusion.lightning_modules.diffusion import DDPM, EulerODE, Heun, SamplingConfig
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from tests.helpers import CONFIGS

SIT = dict(model="SiT-S/4", input_size=16, num_classes=4, depth=1, hidden_size=32, num_heads=2)
SID2 = dict(preset=None, resolution=16, num_classes=4, patch_size=2, channels=[16, 32],
            block_types=["resblock", "transformer"], num_updown_blocks=[1], num_mid_blocks=1, block_dropout=[0.0, 0.0],
            head_dim=16)


def test_a_mapping_replaces_only_the_fields_it_names():
    module = SiD2(**SID2, optimizer={"lr": 3e-3}, sampling={"num_steps": 7})
    # SiD2's A.4 values stay: β₂ 0.99, ε 1e-12, 10k warm-up; DDPM with γ = 0.3, w = 2 on A.4's interval
    assert module.optimizer_config == OptimizerConfig(lr=3e-3, betas=(0.9, 0.99), eps=1e-12, warmup_steps=10_000)
    assert module.sampling == SamplingConfig(sampler=DDPM(), num_steps=7, guidance_scale=2.0, guidance_interval="auto")
    assert SiT(**SIT).optimizer_config == OptimizerConfig(lr=1e-4)  # another recipe, its own defaults


def test_bad_fields_values_and_classes_are_refused_by_name():
    with pytest.raises(TypeError, match=r"OptimizerConfig has no field\(s\) \['learning_rate'\]"):
        SiT(**SIT, optimizer={"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="optimizer.schedule"):
        SiT(**SIT, optimizer={"schedule": "linear"})
    with pytest.raises(ValueError, match="sampling.num_steps"):
        SiT(**SIT, sampling={"num_steps": 0})
    with pytest.raises(TypeError, match="torch.nn.Linear is not a known Sampler"):
        SiT(**SIT, sampling={"sampler": {"class_path": "torch.nn.Linear", "init_args": {}}})
    with pytest.raises(ValueError, match="SiT samples a flow process: DDPM"):
        SiT(**SIT).sample(torch.tensor([0]), sampler=DDPM())


def test_checkpoints_store_whole_plain_groups_and_rebuild_the_same_recipe(tmp_path):
    module = SiT(**SIT, sampling={"sampler": Heun(), "num_steps": 3}, optimizer={"lr": 2e-3})
    data = SyntheticDataModule(resolution=16, num_classes=4, train_size=8, val_size=4, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "sit.ckpt")
    hparams = torch.load(tmp_path / "sit.ckpt", weights_only=True)["hyper_parameters"]  # no custom class inside
    assert hparams["sampling"]["sampler"] == {"class_path": "speedrun_diffusion.lightning_modules.diffusion.sampling.Heun",
                                              "init_args": {}}
    assert hparams["optimizer"]["betas"] == (0.9, 0.999)  # the default, filled in
    restored = SiT.load_from_checkpoint(tmp_path / "sit.ckpt", weights_only=True)
    assert restored.sampling == module.sampling and restored.optimizer_config == module.optimizer_config
    noise = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(restored.sample(torch.tensor([0, 1]), noise=noise),
                               module.sample(torch.tensor([0, 1]), noise=noise))


def test_the_command_line_reaches_one_field_and_keeps_the_rest(monkeypatch):
    from speedrun_diffusion.lightning_modules.cli import build_cli

    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])
    cli = build_cli(["-c", str(CONFIGS / "sid2" / "tiny_cpu.yaml"), "--model.init_args.optimizer.lr", "5e-4",
                     "--model.init_args.sampling.sampler", "EulerODE"], run=False)
    with pytest.raises(ValueError, match="SiD2 samples a vp process"):
        cli.model.sampling_options()
    assert cli.model.optimizer_config.lr == 5e-4 and cli.model.optimizer_config.betas == (0.9, 0.99)
    assert isinstance(cli.model.sampling.sampler, EulerODE) and cli.model.sampling.num_steps == 128


def test_sample_speaks_one_vocabulary_and_names_what_it_does_not_take():
    module = SiT(**SIT, sampling={"num_steps": 2})
    with pytest.raises(TypeError, match=r"SiT.sample\(\) got unexpected argument\(s\) \['cfg_scale'\]; it takes labels, "
                                        r"num_steps, guidance_scale"):
        module.sample(torch.tensor([0]), cfg_scale=1.5)
    sid2 = SiD2(**SID2, sampling={"num_steps": 2})
    with pytest.raises(TypeError, match=r"\['gamma'\]"):  # DDPM's γ is a field of the sampler object
        sid2.sample(torch.tensor([0]), gamma=0.5)
    labels, noise = torch.tensor([0, 1]), torch.randn(2, 3, 16, 16)
    # the same names everywhere: an explicit override equals the same value configured
    configured = SiD2(**SID2, sampling={"num_steps": 3, "guidance_scale": 3.0, "sampler": DDPM(gamma=0.5)})
    configured.load_state_dict(sid2.state_dict())
    torch.testing.assert_close(sid2.sample(labels, num_steps=3, guidance_scale=3.0, sampler=DDPM(gamma=0.5),
                                           noise=noise, generator=torch.Generator().manual_seed(0)),
                               configured.sample(labels, noise=noise, generator=torch.Generator().manual_seed(0)))
