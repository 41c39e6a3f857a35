"""`callbacks.AutoGuidance` and the recipes' autoguided ``sample()``: D_guide + w·(D − D_guide) identities, equality
with a hand-built `GuidedDenoiser` on the same noise (SiT, SR-DiT, SiD2), guides from a Lightning checkpoint
(EMA shadow) and from an official SR-DiT file, light / restorable callback state, frozen guide, clear errors."""
from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor, nn

from speedrun_diffusion.callbacks import EMA, AutoGuidance
from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules import SiT
from speedrun_diffusion.lightning_modules.checkpoints import srdit_sit_config
from speedrun_diffusion.lightning_modules.diffusion import (
    EulerODE,
    GuidedDenoiser,
    euler_maruyama_sample,
    euler_ode_sample,
)
from speedrun_diffusion.lightning_modules.diffusion.samplers import ddpm_ancestral_sample
from speedrun_diffusion.lightning_modules.networks.sprint import SprintDiT
from speedrun_diffusion.lightning_modules.recipe import CheckpointMismatchError
from speedrun_diffusion.lightning_modules.sid2 import SiD2
from speedrun_diffusion.lightning_modules.srdit import SRDiT
from speedrun_diffusion.lightning_modules.weights import safe_torch_load
from tests.helpers import ROOT

SIT = dict(model="SiT-S/4", input_size=16, in_channels=3, num_classes=4, depth=2, hidden_size=64, num_heads=2,
           sampling=dict(num_steps=4, sampler=EulerODE()))
SIT_GUIDE = {**SIT, "depth": 1, "hidden_size": 32}
SRDIT = dict(model="SiT-S/1", input_size=4, in_channels=4, num_classes=3, depth=5, hidden_size=32, num_heads=2,
             z_dim=8, projector_dim=16, shift_base=16, sampling=dict(num_steps=3))
# the official SR-DiT SiT kwargs of a network that fits SRDIT (always RMSNorm, RoPE, value residual, SPRINT 2/…/2)
OFFICIAL_SRDIT = dict(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=5, num_heads=2, num_classes=3,
                      z_dims=[8], projector_dim=16, qk_norm=True)
SID2 = dict(preset=None, resolution=16, num_classes=4, patch_size=2, channels=[32, 64],
            block_types=["resblock", "transformer"], num_updown_blocks=[1], num_mid_blocks=1, block_dropout=[0.0, 0.0],
            head_dim=16, sampling=dict(num_steps=5))


def _perturbed(module: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    """Weights moved off the (partly zero) initialisation so every output depends on them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return module


def _recipe(name: str, seed: int = 0):
    torch.manual_seed(seed)
    module = {"sit": lambda: SiT(**SIT), "srdit": lambda: SRDiT(**SRDIT), "sid2": lambda: SiD2(**SID2)}[name]()
    return _perturbed(module, seed + 100)


def _unguided(module, labels: Tensor, seed: int) -> Tensor:
    return module.sample(labels, generator=torch.Generator().manual_seed(seed), guidance_scale=1.0)


LABELS = torch.tensor([0, 1, 2, 1])


@pytest.mark.parametrize("name", ["sit", "srdit", "sid2"])
def test_guide_equal_to_main_net_gives_the_unguided_samples(name):
    module = _recipe(name)
    reference = _unguided(module, LABELS, seed=3)
    for scale in (0.0, 2.5, -1.0):  # D_g + w·(D − D_g) = D for any w when D_g = D
        module.set_autoguide(copy.deepcopy(module.net), scale)
        torch.testing.assert_close(module.sample(LABELS, generator=torch.Generator().manual_seed(3)), reference,
                                   atol=1e-6, rtol=0)
    module.set_autoguide(None)


class _Forbidden(nn.Module):
    def forward(self, *args, **kwargs):
        raise AssertionError("the guide must not be evaluated at scale 1")

    velocity = forward


@pytest.mark.parametrize("name", ["sit", "srdit", "sid2"])
def test_scale_one_is_unguided_and_never_calls_the_guide(name):
    module = _recipe(name)
    module.set_autoguide(_Forbidden(), 1.0)
    torch.testing.assert_close(module.sample(LABELS, generator=torch.Generator().manual_seed(5)),
                               _unguided(module, LABELS, seed=5), atol=0, rtol=0)


def _hand_built(name: str, module, guide: nn.Module, scale: float, interval, seed: int) -> Tensor:
    """The guided sampler written out with GuidedDenoiser and the plain samplers (no recipe sampling code)."""
    module.net.eval()  # as sample(): no label dropout
    g = torch.Generator().manual_seed(seed)
    if name == "sit":
        noise = torch.randn(len(LABELS), 3, 16, 16, generator=g)
        d = GuidedDenoiser(lambda x, t, y: module.net(x, t, y), scale=scale, guide_fn=lambda x, t, y: guide(x, t, y),
                           interval=interval)
        return euler_ode_sample(d.with_labels(LABELS), noise, SIT["sampling"]["num_steps"], shift=module.shift).clamp(-1, 1)
    if name == "srdit":
        noise = (torch.randn(len(LABELS), 4, 4, 4, generator=g), torch.randn(len(LABELS), 8, generator=g))
        d = GuidedDenoiser(module.net.velocity, scales=(scale, scale), guide_fn=guide.velocity, interval=interval)
        x0, _ = euler_maruyama_sample(d.with_labels(LABELS), noise, SRDIT["sampling"]["num_steps"], shift=module.shift,
                                      generator=g)
        return x0.clamp(-1, 1)
    noise = torch.randn(len(LABELS), 3, 16, 16, generator=g)

    def x_hat(net):
        def fn(z, t, y):
            from speedrun_diffusion.lightning_modules.diffusion.vp import alpha_sigma, x_from_v

            lam = module.sample_schedule(t.float())
            alpha, sigma = alpha_sigma(lam)
            return x_from_v(z.float(), net(z, lam, y).float(), alpha, sigma)
        return fn

    d = GuidedDenoiser(x_hat(module.net), scale=scale, guide_fn=x_hat(guide), interval=interval, interval_on="logsnr",
                       schedule=module.sample_schedule)
    return ddpm_ancestral_sample(d.with_labels(LABELS), noise, module.sample_schedule, SID2["sampling"]["num_steps"],
                                 gamma=module.sampling.sampler.gamma, clip_x=module.sampling.sampler.clip_x, generator=g)


@pytest.mark.parametrize("name, interval", [("sit", (0.3, 0.9)), ("srdit", None), ("sid2", (-4.0, 3.0))])
def test_different_guide_equals_a_hand_built_guided_denoiser(name, interval):
    module = _recipe(name, seed=0)
    guide = _recipe(name, seed=1).net.eval()  # same architecture, other weights: a "bad version"
    module.set_autoguide(guide, 2.0, interval)
    out = module.sample(LABELS, generator=torch.Generator().manual_seed(7))
    expected = _hand_built(name, module, guide, 2.0, interval, seed=7)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    module.set_autoguide(None)
    assert (out - _unguided(module, LABELS, seed=7)).abs().max() > 1e-3  # the guide changed the samples


def test_guided_denoiser_rejects_a_guide_of_another_output_shape():
    d = GuidedDenoiser(lambda x, t, y: x, scale=2.0, guide_fn=lambda x, t, y: x[:, :-1])
    with pytest.raises(ValueError, match="guide prediction 0 has shape"):
        d(torch.zeros(2, 3, 4, 4), torch.full((2,), 0.5), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------------ Lightning checkpoints
@pytest.fixture(scope="module")
def sit_guide_ckpt(tmp_path_factory) -> tuple[Path, dict[str, Tensor], dict[str, Tensor]]:
    """A 3-step fit of a small SiT with EMA: (checkpoint, its EMA shadow, its raw net weights)."""
    path = tmp_path_factory.mktemp("guide") / "guide.ckpt"
    torch.manual_seed(0)
    module, ema = SiT(**SIT_GUIDE, optimizer=dict(lr=1e-2)), EMA(decay=0.5)
    data = SyntheticDataModule(resolution=16, num_classes=4, train_size=8, val_size=4, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[ema],
                        limit_val_batches=0)
    trainer.fit(module, data)
    trainer.save_checkpoint(path)
    raw = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    return path, ema.full_state(module), raw


def _params_equal(net: nn.Module, weights: dict[str, Tensor]) -> bool:
    return all(torch.equal(p.detach().cpu(), weights[n]) for n, p in net.named_parameters())


def test_guide_from_a_lightning_checkpoint_uses_its_ema_and_runs_in_validate(sit_guide_ckpt):
    path, shadow, raw = sit_guide_ckpt
    assert not _params_equal(_loaded(raw), shadow)  # the EMA shadow differs from the raw weights
    torch.manual_seed(0)
    main = _perturbed(SiT(**SIT), 11)
    callback = AutoGuidance(checkpoint=str(path), scale=1.5, interval=(0.1, 0.9))
    data = SyntheticDataModule(resolution=16, num_classes=4, train_size=8, val_size=4, batch_size=4)
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[callback], limit_val_batches=1).validate(main, data)
    ag = main.autoguide
    assert ag is not None and ag.scale == 1.5 and ag.interval == (0.1, 0.9)
    assert ag.net.cfg.depth == 1 and ag.net.cfg.hidden_size == 32  # rebuilt from the guide's hyper-parameters
    assert _params_equal(ag.net, shadow)
    # frozen and outside the module tree: no gradients, not saved, not optimised, eval mode
    assert not any(p.requires_grad for p in ag.net.parameters()) and not ag.net.training
    assert not any(k.startswith("_autoguide") or "autoguide" in k for k in main.state_dict())
    assert len(main.state_dict()) == len(SiT(**SIT).state_dict())
    optimised = {id(p) for group in main.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in ag.net.parameters()}
    # and the sampler uses it: equal to the hand-built guided ODE
    out = main.sample(LABELS, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, _hand_built("sit", main, ag.net, 1.5, (0.1, 0.9), seed=2), atol=1e-5, rtol=1e-5)

    raw_cb = AutoGuidance(checkpoint=str(path), scale=1.5, use_ema=False)
    assert _params_equal(raw_cb.build(main), raw)


def _loaded(weights: dict[str, Tensor]) -> nn.Module:
    net = SiT(**SIT_GUIDE).net
    net.load_state_dict(weights)
    return net


def test_state_dict_is_light_and_restores(sit_guide_ckpt, tmp_path):
    path, shadow, _ = sit_guide_ckpt
    main = SiT(**SIT)
    callback = AutoGuidance(checkpoint=str(path), scale=1.42, interval=(0.0, 1.0))
    callback.install(main)
    state = callback.state_dict()
    assert not any(torch.is_tensor(v) or isinstance(v, dict) for k, v in state.items() if k != "official_config")
    assert state["checkpoint"] == str(path) and state["scale"] == 1.42 and state["interval"] == [0.0, 1.0]
    torch.save({"callbacks": {"AutoGuidance": state}}, tmp_path / "light.ckpt")
    assert (tmp_path / "light.ckpt").stat().st_size < 4096

    fresh = AutoGuidance(scale=1.0)  # configured without a guide: the checkpoint's is adopted
    fresh.load_state_dict(safe_torch_load(tmp_path / "light.ckpt")["callbacks"]["AutoGuidance"])
    other = SiT(**SIT)
    fresh.install(other)
    assert other.autoguide.scale == 1.42 and other.autoguide.interval == (0.0, 1.0)
    assert _params_equal(other.autoguide.net, shadow)

    # store_weights: the guide travels with the checkpoint and is rebuilt without its file
    heavy = AutoGuidance(checkpoint=str(tmp_path / "copy.ckpt"), scale=2.0, store_weights=True)
    (tmp_path / "copy.ckpt").write_bytes(Path(path).read_bytes())
    heavy.install(SiT(**SIT))
    torch.save({"callbacks": {"AutoGuidance": heavy.state_dict()}}, tmp_path / "heavy.ckpt")
    (tmp_path / "copy.ckpt").unlink()
    restored = AutoGuidance(scale=1.0)
    restored.load_state_dict(safe_torch_load(tmp_path / "heavy.ckpt")["callbacks"]["AutoGuidance"])
    third = SiT(**SIT)
    restored.install(third)
    assert _params_equal(third.autoguide.net, shadow) and third.autoguide.scale == 2.0


# ------------------------------------------------------------------------------------------ official checkpoints
def test_guide_from_an_official_srdit_file(tmp_path):
    cfg, sprint = srdit_sit_config(OFFICIAL_SRDIT)
    torch.manual_seed(3)
    official = _perturbed(SprintDiT(cfg, sprint), 4)
    ema = {k: v.clone() for k, v in official.state_dict().items()}
    model = {k: v + 1.0 if v.is_floating_point() else v for k, v in ema.items()}
    torch.save({"model": model, "ema": ema}, tmp_path / "0000100.pt")  # the official train.py layout
    main = _recipe("srdit")
    callback = AutoGuidance(checkpoint=str(tmp_path / "0000100.pt"), official_kind="srdit.sit",
                            official_config=OFFICIAL_SRDIT, scale=1.8)
    callback.install(main)
    guide = main.autoguide.net
    assert isinstance(guide, SprintDiT) and all(torch.equal(guide.state_dict()[k], ema[k]) for k in ema)
    out = main.sample(LABELS, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, _hand_built("srdit", main, guide, 1.8, None, seed=4), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ errors
def test_clear_errors(sit_guide_ckpt, tmp_path):
    path, _, _ = sit_guide_ckpt
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        AutoGuidance(checkpoint=str(tmp_path / "missing.ckpt"), scale=2.0).install(SiT(**SIT))
    with pytest.raises(CheckpointMismatchError, match="written by recipe speedrun_diffusion.lightning_modules.sit.SiT"):
        AutoGuidance(checkpoint=str(path), scale=2.0).install(_recipe("sid2"))
    with pytest.raises(ValueError, match="needs checkpoint="):
        AutoGuidance(scale=2.0).install(SiT(**SIT))
    with pytest.raises(KeyError, match="official_kind 'nope'"):
        AutoGuidance(checkpoint=str(path), official_kind="nope", scale=2.0)
    with pytest.raises(ValueError, match="interval"):
        AutoGuidance(checkpoint=str(path), scale=2.0, interval=(0.8, 0.2))
    # a guide trained at another resolution does not fit the main network: caught by the probe, naming the file
    ckpt = safe_torch_load(path)
    ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], "input_size": 8}
    ckpt["state_dict"] = {f"net.{k}": v for k, v in SiT(**{**SIT_GUIDE, "input_size": 8}).net.state_dict().items()}
    ckpt.pop("callbacks", None)
    torch.save(ckpt, tmp_path / "small_res.ckpt")
    with pytest.raises(ValueError, match="small_res.ckpt does not fit SiT"):
        AutoGuidance(checkpoint=str(tmp_path / "small_res.ckpt"), scale=2.0, use_ema=False).install(SiT(**SIT))


# ------------------------------------------------------------------------------------------ configs
def test_sid2_autoguidance_configs_compose_and_the_guide_config_fits_the_main_model(tmp_path, monkeypatch):
    """configs/sid2/autoguidance: the guide config's network is accepted by the add-on's callback on tiny_cpu.yaml."""
    from speedrun_diffusion.lightning_modules.cli import build_cli

    root = ROOT / "configs" / "sid2"
    monkeypatch.setattr("sys.argv", ["speedrun-diffusion"])
    monkeypatch.chdir(tmp_path)  # the add-on names runs/sid2_tiny_cpu_guide/checkpoints/last.ckpt, relative
    guide_cli = build_cli(["-c", str(root / "autoguidance" / "tiny_cpu_guide.yaml")], run=False)
    guide = guide_cli.model
    main_width = SiD2.net_from_hparams({**guide.hparams, "channels": [64, 128, 256]})  # drops _class_path etc.
    assert sum(p.numel() for p in guide.net.parameters()) < 0.5 * sum(p.numel() for p in main_width.parameters())
    main_cli = build_cli(["-c", str(root / "tiny_cpu.yaml"), "-c", str(root / "autoguidance" / "tiny_cpu_autoguidance.yaml")],
                         run=False)
    names = [type(c).__name__ for c in main_cli.trainer.callbacks]
    assert "EMA" in names and "AtomicModelCheckpoint" in names  # appended to, not replacing, the main callbacks
    callback = next(c for c in main_cli.trainer.callbacks if isinstance(c, AutoGuidance))
    ckpt = Path(callback.checkpoint)
    ckpt.parent.mkdir(parents=True)
    torch.save({"recipe": SiD2.recipe_name(), "hyper_parameters": dict(guide.hparams),
                "state_dict": {f"net.{k}": v for k, v in guide.net.state_dict().items()}}, ckpt)
    callback.install(main_cli.model)  # includes the one-step probe sample
    assert main_cli.model.autoguide.net.cfg.channels == (32, 64, 128)
