"""SpeedDiff (supp. Algorithm 1): the total is the Tab. 14-weighted sum of its terms; the batched decoder pass equals
the reference TPR function; the joint gradient reaches encoder, decoder, denoiser and REPA++ adapters (and never a
frozen VAE); the discriminator loss is hinge + 0.05·LeCam; the joint losses fall on a fixed batch; checkpoints hold
VAE, discriminator and LeCam state but not LPIPS / VFM; the bad model loads and freezes the VAE of a checkpoint and
autoguides the main model exactly as D_bad + w·(D − D_bad); sampling is finite, in [−1, 1], also unconditional; and
the tiny config → bad model → autoguided validation chain runs through the CLI."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules.diffusion import EulerODE, euler_ode_sample, flow_interpolate
from speedrun_diffusion.lightning_modules.losses.gan import (
    GANPhase,
    LeCamRegularizer,
    hinge_d_loss,
    lecam_regularization,
)
from speedrun_diffusion.lightning_modules.losses.lpips import LPIPS, ConvFeatures
from speedrun_diffusion.lightning_modules.losses.speeddiff_loss import (
    speeddiff_discriminator_losses,
    speeddiff_generator_losses,
)
from speedrun_diffusion.lightning_modules.losses.tpr import tpr_loss
from speedrun_diffusion.lightning_modules.networks.discriminators import PatchGANDiscriminator
from speedrun_diffusion.lightning_modules.networks.target_encoders import DINOv2Targets
from speedrun_diffusion.lightning_modules.speeddiff import SpeedDiff
from tests.helpers import ROOT

CONFIGS = ROOT / "configs" / "speeddiff"
VAE = dict(patch_size=4, hidden_size=32, encoder_depth=1, decoder_depth=1, num_heads=2, latent_channels=4,
           swiglu_multiple_of=32)


def tiny(repa_pp: bool = True, **kwargs) -> SpeedDiff:
    torch.manual_seed(0)
    args = dict(vae="B", resolution=32, vae_overrides=VAE, depth=2, hidden_size=32, num_heads=2, num_classes=10,
                repa_pp=repa_pp, repa_depth=1, adapter_dim=32, optimizer=dict(lr=2e-3),
                lpips=LPIPS(ConvFeatures((8, 16)), pretrained=False),
                discriminator=PatchGANDiscriminator(base_channels=8, num_layers=2),
                vfm=DINOv2Targets(random_weights=True, resolution=32,
                                  model_kwargs=dict(patch_size=4, embed_dim=32, depth=1, num_heads=2)))
    return SpeedDiff(**{**args, **kwargs})


def images(n: int = 8) -> dict[str, torch.Tensor]:
    data = SyntheticDataModule(resolution=32, num_classes=10, train_size=n, val_size=n, batch_size=n)
    return next(iter(data.val_dataloader()))


def fit(module: L.LightningModule, batches: list, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_steps=len(batches), logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                        num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


def pinned(module: SpeedDiff, batch: dict, seed: int = 3) -> dict:
    """Every random draw of one generator step, fixed."""
    g = torch.Generator().manual_seed(seed)
    n, shape = len(batch["label"]), module.latent_shape
    return dict(t=torch.rand(n, generator=g), noise=torch.randn(n, *shape, generator=g),
                latent_noise=torch.randn(n, *shape, generator=g))


def generator_losses(module: SpeedDiff, batch: dict, **draws) -> dict:
    module.net.eval()  # no class dropout: the terms are a deterministic function of the draws
    module.discriminator.eval()
    out = speeddiff_generator_losses(
        module.tokenizer, module.net, batch["image"], batch["label"], module.time_sampler, module.weights,
        module.train_vae, module.lpips, module.discriminator, module.g_loss_fn, module.repa,
        module._vfm_tokens(batch["image"]), module.repa_depth, GANPhase(), **draws)
    return out.losses


def test_total_is_the_table_14_weighted_sum():
    module, batch = tiny(), images()
    losses = generator_losses(module, batch, **pinned(module, batch))
    vae = losses["mse"] + losses["lpips"] + 0.1 * losses["gan"] + 1e-5 * losses["kl"]
    torch.testing.assert_close(losses["vae"], vae)
    torch.testing.assert_close(losses["tpr"], losses["tpr_mse"] + losses["tpr_lpips"])
    torch.testing.assert_close(losses["repa_pp"], losses["repa_latent"] + losses["repa_diffusion"])
    torch.testing.assert_close(losses["loss"], losses["diffusion"] + vae + losses["tpr"] + losses["repa_pp"])
    # eq. 11 on the encoder's posterior, batch mean of the per-image sum
    post = module.tokenizer.posterior(batch["image"])
    kl = 0.5 * (post.mean**2 + post.logvar.exp() - post.logvar - 1).flatten(1).sum(1).mean()
    torch.testing.assert_close(losses["kl"], kl)
    # the diagnostics: Tab. 11's mean log-variance and the std of the reparameterised z0 (eq. 7)
    z0 = post.mean + torch.exp(0.5 * post.logvar) * pinned(module, batch)["latent_noise"]
    torch.testing.assert_close(losses["logvar_mean"], post.logvar.mean())
    torch.testing.assert_close(losses["latent_std"], z0.std())


def test_one_batched_decoder_pass_equals_the_reference_tpr_loss():
    """x̂_vae and x̂_tpr are decoded (and scored by LPIPS) as one 2B batch: same values as tpr_loss alone."""
    module, batch = tiny(repa_pp=False), images()
    g = torch.Generator().manual_seed(5)
    for p in module.net.parameters():  # a non-zero velocity (the adaLN-zero init predicts v = 0)
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    draws = pinned(module, batch)
    losses = generator_losses(module, batch, **draws)
    with torch.no_grad():
        z0 = module.tokenizer.posterior(batch["image"]).sample(draws["latent_noise"])
        z_t = flow_interpolate(z0, draws["noise"], draws["t"])
        v = module.net(z_t, draws["t"], batch["label"])
        ref = tpr_loss(module.tokenizer.decode, z_t, draws["t"], v, batch["image"], module.lpips)
        x_vae = module.tokenizer.decode(z0)
    for key in ("tpr", "tpr_mse", "tpr_lpips"):
        torch.testing.assert_close(losses[key], ref[key], rtol=1e-5, atol=1e-6)
    # eq. 8 with the target ε − z0, as a mean over the latent's entries (the paper writes ‖·‖²₂; a constant factor)
    torch.testing.assert_close(losses["diffusion"], (v - (draws["noise"] - z0)).square().mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["mse"], (x_vae - batch["image"]).square().mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["lpips"], module.lpips(x_vae, batch["image"]), rtol=1e-5, atol=1e-6)


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_joint_gradient_reaches_every_trained_network():
    module, batch = tiny(), images()
    module.compute_losses(batch)["loss"].backward()
    for name in ("tokenizer.encoder", "tokenizer.decoder", "net", "repa.latent_adapter", "repa.diffusion_adapter"):
        assert _grad_norm(module.get_submodule(name)) > 0, name
    assert all(p.grad is None for p in module.lpips.parameters()) and all(
        p.grad is None for p in module.vfm.parameters())


def test_discriminator_loss_is_hinge_plus_lecam():
    torch.manual_seed(0)
    disc, lecam = PatchGANDiscriminator(base_channels=8, num_layers=2), LeCamRegularizer(0.999)
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    out = speeddiff_discriminator_losses(disc.eval(), real, fake, lecam, 0.05)
    with torch.no_grad():
        lr, lf = disc(real), disc(fake)
    anchors = lecam.anchors()  # after the one update the call made (zero-debiased: the batch means)
    torch.testing.assert_close(anchors[0], lr.mean(), rtol=1e-5, atol=1e-6)
    expected = hinge_d_loss(lr, lf) + 0.05 * lecam_regularization(lr, lf, *anchors)
    torch.testing.assert_close(out["d_loss"], expected, rtol=1e-5, atol=1e-6)


def test_joint_losses_fall_on_a_fixed_batch():
    module, batch = tiny(), images(16)
    with torch.no_grad():
        before = generator_losses(module, batch, **pinned(module, batch))
    trainer = fit(module, [batch] * 40)
    with torch.no_grad():
        after = generator_losses(module, batch, **pinned(module, batch))
    assert trainer.global_step == 40  # the discriminator step does not count
    assert after["mse"] < 0.3 * before["mse"] and after["tpr_mse"] < 0.5 * before["tpr_mse"]
    assert after["diffusion"] < 0.5 * before["diffusion"] and after["lpips"] < before["lpips"]
    assert after["repa_pp"] < before["repa_pp"]
    assert int(module.lecam.num_updates) == 40  # one discriminator step per joint step


def test_gan_phase_gates_discriminator_and_adversarial_term():
    module, batch = tiny(repa_pp=False), images()
    disc_before = [p.detach().clone() for p in module.discriminator.parameters()]
    module.gan_phase = GANPhase(lpips=False, disc=False, adversarial=False)
    losses = module.compute_losses(batch)
    assert "gan" not in losses and "lpips" not in losses and "tpr_lpips" in losses  # TPR's LPIPS is not a GAN term
    fit(module, [batch] * 2)
    assert all(torch.equal(a, b) for a, b in zip(disc_before, module.discriminator.parameters()))


def test_checkpoint_resumes_vae_discriminator_and_lecam_and_the_bad_model_freezes_its_vae(tmp_path):
    module, batch = tiny(), images()
    trainer = fit(module, [batch] * 3)
    path = tmp_path / "main.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    keys = saved["state_dict"].keys()
    assert any(k.startswith("tokenizer.encoder.") for k in keys) and any(k.startswith("discriminator.") for k in keys)
    assert "lecam.num_updates" in keys and not any(k.startswith(("lpips.", "vfm.")) for k in keys)
    assert len(saved["optimizer_states"]) == 2

    resumed = tiny()
    trainer2 = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer2.fit(resumed, train_dataloaders=DataLoader([batch] * 4, batch_size=None), ckpt_path=path)
    assert trainer2.global_step == 4 and int(resumed.lecam.num_updates) == 4

    # A.3.1: the bad model — half the blocks and heads — on the frozen VAE of that checkpoint
    bad = tiny(repa_pp=False, frozen_vae=str(path), depth=1, hidden_size=16, num_heads=1, tpr_mse_weight=0.0,
               tpr_lpips_weight=0.0)
    for name, value in bad.tokenizer.state_dict().items():
        torch.testing.assert_close(value, saved["state_dict"][f"tokenizer.{name}"])
    assert bad.discriminator is None and bad.lpips is None and bad.repa is None
    vae_before = {k: v.clone() for k, v in bad.tokenizer.state_dict().items()}
    assert set(bad.compute_losses(batch)) == {"diffusion", "loss"}
    trainer3 = fit(bad, [batch] * 2)
    assert len(trainer3.optimizers) == 1 and not any(p.requires_grad for p in bad.tokenizer.parameters())
    for name, value in bad.tokenizer.state_dict().items():
        assert torch.equal(value, vae_before[name]), name
    trainer3.save_checkpoint(tmp_path / "bad.ckpt")

    # callbacks.AutoGuidance rebuilds the bad denoiser alone (net_from_hparams) and sample() uses it
    from speedrun_diffusion.callbacks import AutoGuidance

    main = tiny(repa_pp=False)
    for p in main.net.parameters():  # non-trivial outputs (the adaLN-zero init makes them 0)
        p.data.normal_(0, 0.05)
    labels, noise = torch.tensor([1, 10]), torch.randn(2, *main.latent_shape)  # 10 = the null class
    plain = main.sample(labels, num_steps=4, noise=noise, sampler=EulerODE(), return_latents=True)
    AutoGuidance(str(tmp_path / "bad.ckpt"), use_ema=False, scale=2.0).install(main)
    guide = main.autoguide.net
    assert guide.cfg.depth == 1 and guide.cfg.hidden_size == 16
    guided = main.sample(labels, num_steps=4, noise=noise, sampler=EulerODE(), return_latents=True)
    assert not torch.allclose(plain, guided, atol=1e-4)

    main.net.eval()  # as sample() runs it: no class dropout

    def velocity(x, t):
        d_main, d_bad = main.net(x, t, labels), guide(x, t, labels)
        return d_bad + 2.0 * (d_main - d_bad)

    torch.testing.assert_close(guided, euler_ode_sample(velocity, noise, 4), rtol=1e-5, atol=1e-5)


def test_samples_are_images_also_unconditional_and_with_cfg():
    module = tiny(repa_pp=False)
    labels = torch.tensor([0, 3, 10])  # 10: unconditional (A.3.2)
    for kwargs in (dict(), dict(guidance_scale=3.0), dict(sampler=EulerODE())):
        x = module.sample(labels, num_steps=3, generator=torch.Generator().manual_seed(0), **kwargs)
        assert x.shape == (3, 3, 32, 32) and torch.isfinite(x).all() and x.abs().max() <= 1


def test_bad_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="repa_depth 5"):
        tiny(repa_depth=5)
    with pytest.raises(FileNotFoundError, match="frozen_vae"):
        tiny(frozen_vae=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="must be >= 0"):
        tiny(gan_weight=-1.0)


# ----------------------------------------------------------------------------------------------- CLI chain


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _callback(config: dict, name: str) -> dict:
    return next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith(name))["init_args"]


def test_tiny_config_then_bad_model_then_autoguided_validation_through_the_cli(tmp_path, monkeypatch):
    from speedrun_diffusion.lightning_modules.cli import build_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    main = yaml.safe_load((CONFIGS / "tiny_cpu.yaml").read_text())
    main["trainer"].update(max_steps=3, limit_val_batches=1, val_check_interval=3, log_every_n_steps=1)
    main["data"]["init_args"].update(train_size=64, val_size=8, batch_size=8)
    main["model"]["init_args"]["sampling"].update(num_steps=3)
    _callback(main, "LogSamples").update(num_samples=2, num_steps=3, every_n_steps=3)
    main_yaml = _write(tmp_path / "main.yaml", main)
    cli = build_cli(["fit", "-c", str(main_yaml), *quiet])
    assert cli.trainer.global_step == 3
    metrics = cli.trainer.callback_metrics
    for term in ("diffusion", "mse", "lpips", "gan", "kl", "tpr", "repa_pp", "d_loss", "lecam"):
        assert torch.isfinite(metrics[f"train/{term}"]), term
    assert list((tmp_path / "runs/speeddiff_tiny_cpu/samples").glob("*.png"))

    bad_args = ["-c", str(main_yaml), "-c", str(CONFIGS / "bad_model_tiny_cpu.yaml"), "--trainer.max_steps", "2"]
    bad = build_cli(["fit", *bad_args, *quiet])
    assert bad.trainer.global_step == 2 and not bad.model.train_vae and bad.model.net.cfg.depth == 2

    validate = build_cli(["validate", "-c", str(main_yaml), "-c",
                          str(CONFIGS / "autoguidance" / "tiny_cpu_autoguidance.yaml"), "--ckpt_path",
                          "runs/speeddiff_tiny_cpu/checkpoints/last.ckpt", *quiet])
    assert validate.model.autoguide is not None and validate.model.autoguide.net.cfg.hidden_size == 48
