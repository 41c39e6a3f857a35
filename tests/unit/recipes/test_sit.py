"""SiT baseline recipe: the loss falls on a fixed batch, sampling and CFG surface, drop-in use in a
plain `lightning.Trainer` with the synthetic datamodule and the callbacks (README snippet)."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from speedrun_diffusion.callbacks import EMA, LogSamples
from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules import SiT
from speedrun_diffusion.lightning_modules.diffusion import EulerMaruyama, EulerODE

TINY = dict(model="SiT-S/4", input_size=16, in_channels=3, num_classes=4, depth=2, hidden_size=64, num_heads=2,
            sampling=dict(num_steps=6, sampler=EulerODE()))


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    module = SiT(**TINY, optimizer=dict(lr=2e-3))
    data = SyntheticDataModule(resolution=16, num_classes=4, train_size=32, batch_size=32)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    opt = module.configure_optimizers()["optimizer"]
    g = torch.Generator().manual_seed(0)
    fixed = lambda: module.compute_losses(batch, generator=g.manual_seed(0))["loss"]  # noqa: E731
    start = fixed().item()
    for _ in range(60):
        loss = fixed()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed().item() < 0.6 * start


def test_sample_shapes_range_guidance_and_determinism():
    module = SiT(**TINY)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    labels = torch.tensor([0, 1, 2, 3])
    a = module.sample(labels, generator=torch.Generator().manual_seed(1))
    b = module.sample(labels, generator=torch.Generator().manual_seed(1))
    guided = module.sample(labels, generator=torch.Generator().manual_seed(1), guidance_scale=3.0)
    sde = module.sample(labels, generator=torch.Generator().manual_seed(1), sampler=EulerMaruyama())
    assert a.shape == (4, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, guided) and not torch.allclose(a, sde)
    assert module.net.training  # sampling restores the training mode


def test_time_shift_auto_uses_dimension():
    module = SiT(**{**TINY, "input_size": 32}, time_shift="auto")
    assert abs(module.shift - (3 * 32 * 32 / 4096) ** 0.5) < 1e-12


def test_drop_in_plain_trainer_with_callbacks(tmp_path: Path):
    # the README "Use as a library" snippet, verbatim in spirit
    model = SiT(model="SiT-S/4", input_size=16, num_classes=4, depth=2, hidden_size=64, num_heads=2,
                sampling=dict(num_steps=4), optimizer=dict(lr=1e-3))
    data = SyntheticDataModule(resolution=16, num_classes=4, train_size=64, val_size=16, batch_size=8)
    trainer = L.Trainer(
        max_steps=6, accelerator="cpu", default_root_dir=tmp_path, log_every_n_steps=1, val_check_interval=6,
        limit_val_batches=1, callbacks=[EMA(decay=0.9), LogSamples(every_n_steps=3, num_samples=4)],
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 6
    assert "val/loss" in trainer.callback_metrics
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "train/velocity" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Images("samples")] == [3, 6]
    assert list(tmp_path.rglob("*.ckpt"))


class PoolTokenizer(torch.nn.Module):
    """A fixed 2× average-pool "tokenizer" (encode) with nearest upsampling (decode)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(images, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(latents, scale_factor=2, mode="nearest")


def test_latent_mode_trains_in_latent_space_and_decodes_images():
    module = SiT(**{**TINY, "input_size": 8}, tokenizer=PoolTokenizer(), latent_scale=2.0)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    seen = {}
    forward = module.net.forward

    def spy(x, t, y, **kw):
        seen["shape"] = tuple(x.shape)
        return forward(x, t, y, **kw)

    module.net.forward = spy
    module.compute_losses({"image": images, "label": torch.tensor([0, 1])})
    assert seen["shape"] == (2, 3, 8, 8)  # the denoiser saw the 8×8 latents, not the pixels
    # encode() is the tokenizer times latent_scale (SR-DiT multiplies INVAE latents by 0.3099)
    torch.testing.assert_close(module.encode(images), 2.0 * PoolTokenizer().encode(images))
    out = module.sample(torch.tensor([0, 1]), num_steps=2)
    assert out.shape == (2, 3, 16, 16)
