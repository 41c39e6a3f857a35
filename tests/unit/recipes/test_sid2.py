"""SiD2 recipe: a tiny model overfits one batch, the DDPM sampler with the exact VP denoiser of Gaussian data
reproduces it through `SiD2.sample`, guidance conventions, the time-shifted bias, the 256 → 512 fine-tune
path, the App. A.4 configs, and the tiny config end to end through the CLI."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from speedrun_diffusion.lightning_modules.cli import build_cli
from speedrun_diffusion.lightning_modules.diffusion import DDPM, EulerODE
from speedrun_diffusion.lightning_modules.diffusion.vp import alpha_sigma
from speedrun_diffusion.lightning_modules.networks.uvit import uvit_preset
from speedrun_diffusion.lightning_modules.sid2 import SiD2
from tests.helpers import ROOT
from tests.helpers.gaussian_toy import MU, SIGMA, assert_moments, gaussian_noise, vp_x_posterior

TINY = dict(preset=None, resolution=16, num_classes=4, patch_size=2, channels=[32, 64], block_types=["resblock", "transformer"],
            num_updown_blocks=[1], num_mid_blocks=1, block_dropout=[0.0, 0.0], head_dim=16,
            sampling=dict(num_steps=8))


def _batch(n: int = 16, res: int = 16) -> dict[str, torch.Tensor]:
    from speedrun_diffusion.datamodules import SyntheticDataModule

    data = SyntheticDataModule(resolution=res, num_classes=4, train_size=n, batch_size=n)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    module = SiD2(**TINY, optimizer=dict(lr=3e-3, warmup_steps=0))
    batch = _batch()
    opt = module.configure_optimizers()["optimizer"]
    g = torch.Generator()
    fixed = lambda: module.compute_losses(batch, generator=g.manual_seed(0))  # noqa: E731  same t and noise
    start = fixed()
    for _ in range(50):
        loss = fixed()["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = fixed()
    assert set(start) == {"loss", "sigmoid", "v_mse", "bias"}
    assert end["loss"].item() < 0.2 * start["loss"].item(), (start["loss"].item(), end["loss"].item())


class ExactGaussianV(torch.nn.Module):
    """v̂ = (α·z − E[x|z])/σ for x ~ N(MU, SIGMA) in 3 channels of a 1×1 image: the exact VP v-denoiser."""

    cfg = SimpleNamespace(num_classes=4, in_channels=3, resolution=1)
    num_classes = 4

    def forward(self, z: torch.Tensor, logsnr: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert torch.all(logsnr == logsnr[0])
        alpha, sigma = (float(v) for v in alpha_sigma(logsnr[:1].double()))
        flat = z.double().flatten(1)
        x = vp_x_posterior(flat, alpha, sigma)
        return ((alpha * flat - x) / sigma).to(z.dtype).reshape(z.shape)


def test_sampler_with_exact_vp_denoiser_reproduces_gaussian_data():
    module = SiD2(**{**TINY, "sampling": dict(num_steps=8, sampler=DDPM(clip_x=None))})
    module.net = ExactGaussianV()  # the v-prediction → x̂ conversion and the sampler wiring are under test
    noise = gaussian_noise(10_000, seed=3).reshape(-1, 3, 1, 1)
    samples = module.sample(torch.zeros(10_000, dtype=torch.long), num_steps=256, noise=noise,
                            generator=torch.Generator().manual_seed(4), guidance_scale=1.0)
    assert_moments(samples.flatten(1), MU, SIGMA)


def _perturbed(**kw) -> SiD2:
    module = SiD2(**{**TINY, **kw})
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def test_sample_shapes_guidance_conventions_and_determinism():
    module = _perturbed()
    labels = torch.tensor([0, 1, 2, 3])
    run = lambda **kw: module.sample(labels, generator=torch.Generator().manual_seed(1), **kw)  # noqa: E731
    a, b = run(), run()
    assert a.shape == (4, 3, 16, 16) and a.abs().max() <= 1
    torch.testing.assert_close(a, b)
    # guidance everywhere ("all") and on A.4's interval differ; w = 1 is the conditional prediction alone
    assert not torch.allclose(run(guidance_scale=1.0), run(guidance_scale=4.0, guidance_interval="all"))
    assert not torch.allclose(run(guidance_scale=4.0), run(guidance_scale=4.0, guidance_interval="all"))
    torch.testing.assert_close(run(guidance_scale=1.0), run(guidance_scale=1.0, guidance_interval="all"))
    assert module.net.training


def test_gamma_on_reaches_the_sampler():
    # SiD2 Sec. 1.1 reading ("small") by default; "large" with γ is the "small" reading with 1 − γ
    module = _perturbed()
    labels = torch.tensor([0, 1])
    run = lambda m=module, **kw: m.sample(labels, generator=torch.Generator().manual_seed(1), **kw)  # noqa: E731
    large, mirrored = DDPM(gamma_on="large"), DDPM(gamma=0.7)
    torch.testing.assert_close(run(sampler=large), run(sampler=mirrored), rtol=0, atol=0)
    assert not torch.allclose(run(sampler=large), run())
    configured = SiD2(**{**TINY, "sampling": dict(num_steps=8, sampler=large)})
    configured.load_state_dict(module.state_dict())
    torch.testing.assert_close(run(configured), run(sampler=mirrored), rtol=0, atol=0)
    with pytest.raises(ValueError, match="gamma_on"):
        SiD2(**{**TINY, "sampling": dict(sampler={"class_path": "speedrun_diffusion.lightning_modules.diffusion.DDPM",
                                                  "init_args": {"gamma_on": "prior"}})})
    with pytest.raises(ValueError, match="SiD2 samples a vp process: EulerODE"):
        module.sample(labels, sampler=EulerODE())


def test_paper_defaults():
    with torch.device("meta"):
        module = SiD2(preset="flop_heavy", resolution=512)
    assert module.net.cfg == uvit_preset("flop_heavy", 512)
    sampling = module.sampling_options()
    assert module.loss_bias == -3.0 and sampling.guidance_interval == (-3.0, 5.0) and sampling.guidance_scale == 2.0
    assert sampling.num_steps == 512 and sampling.sampler == DDPM(gamma=0.3, gamma_on="small", clip_x=1.0)
    opt = module.optimizer_config
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay, opt.warmup_steps) == (1e-4, (0.9, 0.99), 1e-12, 0.0, 10_000)
    assert module.schedule.kind == "interpolated_cosine" and (module.schedule.low, module.schedule.high) == (32, 512)
    with torch.device("meta"):
        assert SiD2(preset="small", resolution=256).sampling_options().guidance_interval == (-1.5, 5.0)
        assert SiD2(preset="small", resolution=128).loss_bias == 0.0


def test_time_shifted_bias_and_weightings():
    module = SiD2(**TINY, loss_bias=-3.0, bias_start=-8.0, bias_warmup_steps=100)
    assert [module.current_bias(s) for s in (0, 50, 100, 500)] == [-8.0, -5.5, -3.0, -3.0]
    batch = _batch(4)
    for weighting in ("edm_monotonic", "power"):
        out = SiD2(**TINY, weighting=weighting, power_levels=2).compute_losses(batch)
        assert torch.isfinite(out["loss"]) and weighting in out
    with pytest.raises(ValueError, match="unknown weighting"):
        SiD2(**TINY, weighting="ddpm")


def test_fine_tune_loads_weights_at_a_new_resolution(tmp_path: Path):
    # SiD2 Sec. 2.2: a model trained at one resolution continues at twice the resolution, same patching
    low = _perturbed()
    ckpt = tmp_path / "low.ckpt"
    ema = {k: v + 1.0 for k, v in low.net.state_dict().items()}
    torch.save({"state_dict": low.state_dict(), "callbacks": {"EMA": {"shadow": ema}}}, ckpt)
    high = SiD2(**{**TINY, "resolution": 32}, init_from=str(ckpt), init_from_ema=False)
    for k, v in low.net.state_dict().items():
        torch.testing.assert_close(high.net.state_dict()[k], v)
    high_ema = SiD2(**{**TINY, "resolution": 32}, init_from=str(ckpt))
    torch.testing.assert_close(high_ema.net.stem.weight, ema["stem.weight"])
    assert high.sample(torch.tensor([0]), num_steps=2).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="shape mismatches"):
        SiD2(**{**TINY, "resolution": 32, "patch_size": 4}, init_from=str(ckpt))


@pytest.mark.parametrize("name", ["small_128", "small_256", "small_512", "flop_heavy_128", "flop_heavy_256",
                                  "flop_heavy_512", "flop_heavy_512_finetune"])
def test_paper_configs_build_on_meta(name: str):
    cfg = yaml.safe_load((ROOT / "configs" / "sid2" / f"{name}.yaml").read_text())
    data = cfg["data"]["init_args"]
    args = {**cfg["model"]["init_args"], "resolution": data["resolution"], "num_classes": data["num_classes"]}
    args.pop("init_from", None)
    with torch.device("meta"):
        module = SiD2(**args)
    preset, res = args["preset"], data["resolution"]
    assert module.net.cfg == uvit_preset(preset, res)
    assert cfg["trainer"]["max_steps"] == (1_000_000 if preset == "small" else 800_000) or "finetune" in name
    t = cfg["trainer"]
    assert t["num_nodes"] * t["devices"] * data["batch_size"] == 2048
    assert [c["init_args"]["decay"] for c in t["callbacks"] if c["class_path"] == "EMA"] == [0.9999]


@pytest.fixture
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


FAST = ["--model.init_args.channels", "[16, 32, 32]", "--model.init_args.head_dim", "16",
        "--model.init_args.sampling.num_steps", "4", "--data.init_args.resolution", "16",
        "--data.init_args.batch_size", "4", "--data.init_args.val_size", "8", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false"]


def test_tiny_config_fits_end_to_end(tmp_path: Path, monkeypatch, _clean_argv):
    monkeypatch.chdir(tmp_path)
    cfg = str(ROOT / "configs" / "sid2" / "tiny_cpu.yaml")
    cli = build_cli(["fit", "--config", cfg, *FAST, "--trainer.max_steps", "6"])
    assert cli.trainer.global_step == 6
    run = tmp_path / "runs" / "sid2_tiny_cpu"
    assert list((run / "samples").glob("*.png"))
    metrics = cli.trainer.callback_metrics
    assert {"train/loss", "train/sigmoid", "train/v_mse", "train/bias", "val/loss"} <= set(metrics)
    # the Lightning checkpoint is the fine-tune source (weights_only load, EMA shadow inside)
    hparams = {k: v for k, v in cli.model.hparams.items() if not k.startswith("_")}  # drop the CLI's _class_path
    fresh = SiD2(**{**hparams, "init_from": str(run / "checkpoints" / "last.ckpt")})
    assert fresh.net.cfg == cli.model.net.cfg
