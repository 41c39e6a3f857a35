"""RAE recipes: stage-1 decoder loss falls, the GAN phase gates the discriminator and the adversarial term, non-finite
steps are skipped, predict writes exact latent statistics; stage-2 loss falls, autoguidance changes samples and is
exactly v_guide + w·(v − v_guide) on its interval, the width rule is a config error; and the tiny chain (stage 1 →
cached latents + statistics → stage 2 → decoded samples) runs through the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from speedrun_diffusion.callbacks import GANWarmup
from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules.diffusion import rae_sample
from speedrun_diffusion.lightning_modules.losses.gan import GANPhase
from speedrun_diffusion.lightning_modules.losses.lpips import LPIPS, ConvFeatures
from speedrun_diffusion.lightning_modules.networks.discriminators import DinoDiscriminator
from speedrun_diffusion.lightning_modules.optimization import hold_linear_factor
from speedrun_diffusion.lightning_modules.rae_stage1 import RAEStage1
from speedrun_diffusion.lightning_modules.rae_stage2 import RAEStage2
from speedrun_diffusion.lightning_modules.weights import ema_weights
from tests.helpers import ROOT

CONFIGS = ROOT / "configs" / "rae"
ENCODER = dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64, patch_size=4, pos_grid=8)
DECODER = dict(hidden_size=64, depth=2, num_heads=2, mlp_dim=128)
DISC = dict(depth=2, key_depths=(0, 1), patch_size=4, embed_dim=32, num_heads=2, mlp_ratio=2.0, norm_eps=1e-6, in_chans=3)


def tiny_stage1(**kwargs) -> RAEStage1:
    torch.manual_seed(0)
    args = dict(encoder_overrides=ENCODER, decoder="B", decoder_overrides=DECODER, encoder_input_size=32,
                decoder_patch_size=4, pretrained_encoder=None, lpips=LPIPS(ConvFeatures((8, 16)), pretrained=False),
                discriminator=DinoDiscriminator(DISC, kernel_size=3, image_size=32),
                optimizer=dict(lr=2e-3, warmup_epochs=None),
                num_classes=10)
    return RAEStage1(**{**args, **kwargs})


def tiny_stage2(**kwargs) -> RAEStage2:
    torch.manual_seed(0)
    args = dict(model="DiTDH-S", depth=2, hidden_size=64, num_heads=2, head_depth=1, head_hidden_size=64,
                head_num_heads=2, input_size=4, in_channels=16, num_classes=10, shift_base=64, official_rae=False,
                optimizer=dict(lr=1e-3, schedule="constant"))
    return RAEStage2(**{**args, **kwargs})


def images(n: int = 8, resolution: int = 32) -> dict[str, torch.Tensor]:
    data = SyntheticDataModule(resolution=resolution, num_classes=10, train_size=n, val_size=n, batch_size=n)
    return next(iter(data.val_dataloader()))


def fit(module: L.LightningModule, batches: list, *callbacks: L.Callback) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", max_steps=len(batches), logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=list(callbacks),
                        log_every_n_steps=1, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))  # each element is one batch
    return trainer


# ----------------------------------------------------------------------------------------------- stage 1


def test_decoder_loss_falls_on_a_fixed_batch():
    module, batch = tiny_stage1(noise_tau=0.0), images()
    module.gan_phase = GANPhase(lpips=True, disc=False, adversarial=False)
    with torch.no_grad():
        before = module.generator_losses(batch["image"])
    fit(module, [batch] * 40)
    with torch.no_grad():
        after = module.generator_losses(batch["image"])
    assert after["l1"] < 0.6 * before["l1"] and after["lpips"] < before["lpips"]
    assert "gan" not in after  # adversarial term off


def test_gan_phase_gates_the_discriminator_and_the_adversarial_term():
    module, batch = tiny_stage1(), images(4)
    heads = lambda: torch.cat([p.detach().flatten().clone() for p in module.discriminator.parameters()])  # noqa: E731
    initial, terms = heads(), []
    original = module.generator_losses

    def spy(images, phase=None):
        out = original(images, phase)
        terms.append(set(out))
        return out

    module.generator_losses = spy

    class Record(L.Callback):
        disc: list[bool] = []

        def on_train_batch_end(self, trainer, pl_module, *args):
            self.disc.append(not torch.equal(heads(), initial))

    record = Record()
    trainer = fit(module, [batch] * 7, GANWarmup(lpips_start=0, disc_start=3, adversarial_start=5, unit="step"), record)
    assert trainer.global_step == 7  # discriminator updates do not advance the step counter
    assert record.disc == [False, False, False, True, True, True, True]  # D trains from step 3 on
    assert ["gan" in t for t in terms] == [False] * 5 + [True] * 2  # adversarial loss from step 5
    assert all({"adaptive_weight", "rec_grad_norm", "gan_grad_norm"} <= t for t in terms[5:])
    logged = trainer.callback_metrics
    for key in ("l1", "lpips", "gan", "adaptive_weight", "d_loss", "disc_accuracy", "loss"):
        assert torch.isfinite(logged[f"train/{key}"]), key
    assert len(trainer.lr_scheduler_configs) == 2  # decoder and discriminator schedules


def test_nonfinite_generator_step_is_skipped():
    module, batch = tiny_stage1(), images(4)
    bad = {**batch, "image": batch["image"].clone()}
    bad["image"][0, 0, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    trainer = fit(module, [bad])
    assert trainer.global_step == 1 and module.nonfinite_steps >= 1
    for k, v in module.net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reconstructions_and_predict_statistics(tmp_path):
    module = tiny_stage1(stats_output=str(tmp_path / "stats.pt"))
    batches = [images(6), images(5, 32)]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.predict(module, DataLoader(batches, batch_size=None))
    latents = torch.cat([o["latent"] for o in out]).double()
    assert latents.shape == (11, 32, 8, 8)
    stats = torch.load(tmp_path / "stats.pt", weights_only=True)
    torch.testing.assert_close(stats["mean"].double(), latents.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stats["var"].double(), latents.var(0, unbiased=False), atol=1e-6, rtol=1e-5)
    module.tokenizer.set_latent_stats(stats["mean"], stats["var"])  # normalised latents: zero mean, unit var
    z = module.tokenizer.eval().encode(torch.cat([b["image"] for b in batches]))
    assert z.mean(0).abs().max() < 1e-4 and (z.var(0, unbiased=False) - 1).abs().max() < 1e-2
    pairs = module.sample(torch.arange(3), images=batches[0]["image"][:3], with_inputs=True)
    assert pairs.shape == (6, 3, 32, 32) and pairs.abs().max() <= 1
    torch.testing.assert_close(pairs[0::2], batches[0]["image"][:3])


# ----------------------------------------------------------------------------------------------- stage 2


def test_stage2_loss_falls_on_a_fixed_batch():
    module = tiny_stage2(optimizer=dict(lr=3e-3, schedule="constant"), class_dropout_prob=0.0)
    torch.manual_seed(1)
    batch = {"latent": torch.randn(8, 16, 4, 4), "label": torch.arange(8)}  # the label identifies each latent
    probe = lambda: module.eval().compute_losses(batch, torch.Generator().manual_seed(3))["loss"].item()  # noqa: E731
    before = probe()
    fit(module.train(), [batch] * 60)
    assert probe() < 0.9 * before  # same noise and t before and after (2.08 -> 1.81 measured)


def test_autoguidance_changes_samples_and_equals_the_guided_formula():
    module = tiny_stage2()
    guide = RAEStage2.net_from_hparams(dict(model="DiTDH-S", depth=1, hidden_size=32, num_heads=1, head_depth=1,
                                            head_hidden_size=32, head_num_heads=1, input_size=4, in_channels=16,
                                            num_classes=10))
    torch.manual_seed(2)
    for net in (module.net, guide):  # the official init zeroes the outputs: give both networks non-trivial weights
        for p in net.parameters():
            p.data.normal_(0, 0.05)
    labels, noise = torch.tensor([1, 7]), torch.randn(2, 16, 4, 4)
    plain = module.sample(labels, num_steps=6, noise=noise)
    scale, interval = 2.0, (0.3, 0.9)
    module.set_autoguide(guide, scale, interval)
    guided = module.sample(labels, num_steps=6, noise=noise)
    assert not torch.allclose(plain, guided, atol=1e-3)

    def velocity(x, t):
        main, bad = module.net(x, t, labels), guide(x, t, labels)
        inside = ((t >= interval[0]) & (t <= interval[1])).view(-1, 1, 1, 1)
        return torch.where(inside, bad + scale * (main - bad), main)

    expected = rae_sample(velocity, noise, module.shift, 6)
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=1e-5)
    module.set_autoguide(None)
    torch.testing.assert_close(module.sample(labels, num_steps=6, noise=noise), plain)


def test_autoguidance_callback_rebuilds_the_guide_from_a_stage2_checkpoint(tmp_path):
    """speedrun_diffusion.callbacks.AutoGuidance builds the guide network alone (net_from_hparams: no tokenizer, no weight files)."""
    from speedrun_diffusion.callbacks import AutoGuidance

    guide_module = tiny_stage2(depth=1, hidden_size=32, head_hidden_size=32)
    for p in guide_module.net.parameters():
        p.data.normal_(0, 0.05)
    trainer = fit(guide_module, [{"latent": torch.randn(2, 16, 4, 4), "label": torch.tensor([0, 1])}])
    trainer.save_checkpoint(tmp_path / "guide.ckpt")
    module = tiny_stage2()
    for p in module.net.parameters():
        p.data.normal_(0, 0.05)
    labels, noise = torch.tensor([2, 3]), torch.randn(2, 16, 4, 4)
    plain = module.sample(labels, num_steps=4, noise=noise)
    AutoGuidance(str(tmp_path / "guide.ckpt"), use_ema=False, scale=3.0).install(module)
    assert module.autoguide is not None and module.autoguide.net.cfg.backbone.hidden_size == 32
    assert not torch.allclose(module.sample(labels, num_steps=4, noise=noise), plain, atol=1e-3)


def test_unconditional_uses_the_null_label():
    module = tiny_stage2(unconditional=True)
    assert module.labels(torch.tensor([0, 3])).tolist() == [10, 10]


@pytest.mark.parametrize("kwargs", [dict(head_hidden_size=8, head_num_heads=1),
                                    dict(model="LightningDiT-S/1", hidden_size=8, num_heads=1)])
def test_width_rule_is_a_config_error(kwargs):
    with pytest.raises(ValueError, match="Sec. 4.1"):
        tiny_stage2(**kwargs)


def test_hold_linear_schedule():
    """RAE App. F: constant for the hold, linear to the floor at the end, constant after."""
    assert [hold_linear_factor(s, 4, 8, 0.1) for s in (0, 3, 4, 6, 8, 20)] == pytest.approx([1, 1, 1, 0.55, 0.1, 0.1])
    assert hold_linear_factor(0, 4, 8, 0.1, warmup_steps=2) == 0.5


# ----------------------------------------------------------------------------------------------- tiny chain (CLI)


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _callback(config: dict, name: str) -> dict:
    return next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith(name))["init_args"]


def test_tiny_chain_runs_end_to_end_through_the_cli(tmp_path, monkeypatch):
    """stage 1 fit (GAN on at steps 2 / 3) → predict: cached latents + statistics → stage 2 fit on the cache →
    samples decoded by the stage-1 EMA decoder into images in [-1, 1]."""
    from speedrun_diffusion.lightning_modules.cli import build_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    stage1 = yaml.safe_load((CONFIGS / "tiny_cpu_stage1.yaml").read_text())
    stage1["trainer"].update(max_steps=4, limit_val_batches=1, log_every_n_steps=1)
    stage1["data"]["init_args"].update(train_size=64, val_size=8)
    _callback(stage1, "GANWarmup").update(disc_start=2, adversarial_start=3)
    _callback(stage1, "LogSamples").update(num_samples=2)
    cli1 = build_cli(["fit", "-c", str(_write(tmp_path / "s1.yaml", stage1)), *quiet])
    assert cli1.trainer.global_step == 4
    assert cli1.model.gan_phase == GANPhase(True, True, True)
    ckpt1 = tmp_path / "runs/rae_tiny_cpu/stage1/checkpoints/last.ckpt"

    cache = yaml.safe_load((CONFIGS / "chain" / "tiny_cpu_cache.yaml").read_text())
    cache["data"]["init_args"]["source"]["init_args"].update(train_size=64, val_size=8)
    build_cli(["predict", "-c", str(tmp_path / "s1.yaml"), "-c", str(_write(tmp_path / "cache.yaml", cache)),
               "--ckpt_path", str(ckpt1), "--return_predictions", "false", *quiet])
    latents = tmp_path / "runs/rae_tiny_cpu/stage1/latents"  # cached in the stage-1 run's folder
    manifest = json.loads((latents / "manifest.json").read_text())
    assert manifest["latent_shape"] == [32, 8, 8] and manifest["num_samples"] == 64
    stats = torch.load(latents / "stats.pt", weights_only=True)
    assert stats["mean"].shape == stats["var"].shape == (32, 8, 8)

    stage2 = yaml.safe_load((CONFIGS / "tiny_cpu_stage2.yaml").read_text())
    stage2["trainer"].update(max_steps=3, limit_val_batches=1, val_check_interval=3, log_every_n_steps=1)
    stage2["model"]["init_args"].update(depth=1, hidden_size=32, head_depth=1, head_hidden_size=32,
                                        sampling={"num_steps": 3})
    stage2["model"]["init_args"]["optimizer"].update(hold_epochs=0.5, decay_end_epoch=1.0)
    stage2["data"]["init_args"].update(batch_size=8, val_size=8)
    _callback(stage2, "LogSamples").update(num_samples=2)
    cli2 = build_cli(["fit", "-c", str(_write(tmp_path / "s2.yaml", stage2)), *quiet])
    model = cli2.model
    assert cli2.trainer.global_step == 3 and torch.isfinite(cli2.trainer.callback_metrics["train/loss"])
    shadow = ema_weights(torch.load(ckpt1, weights_only=True))
    for name, value in model.tokenizer.decoder.named_parameters():  # decodes with the stage-1 EMA decoder
        torch.testing.assert_close(value, shadow[name])
    torch.testing.assert_close(model.tokenizer.latent_var, stats["var"])
    samples = model.sample(torch.arange(3), num_steps=3)
    assert samples.shape == (3, 3, 32, 32) and torch.isfinite(samples).all() and samples.abs().max() <= 1
    assert list((tmp_path / "runs/rae_tiny_cpu/stage2/samples").glob("*.png"))
    saved = torch.load(tmp_path / "runs/rae_tiny_cpu/stage2/checkpoints/last.ckpt", weights_only=True)
    assert not any(k.startswith("tokenizer.") for k in saved["state_dict"])  # rebuilt from the stage-1 file
