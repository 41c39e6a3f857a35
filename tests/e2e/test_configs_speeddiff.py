"""Every configs/speeddiff YAML parses through the CLI (add-ons on top of their base config); the paper configs carry
Tab. 14 (sizes, time samplers, loss weights, LeCam, optimiser, batch 256, 1M steps, EMA 0.9999, SDE 250 NFE) and build
on the meta device with the parameter counts of Tab. 7 (within 1 %); the bad models have half the blocks and heads of
their main model (A.3.1) and read the main run's VAE; REPA++ and the Tab. 10 ablations are add-ons, the latter
for Tab. 10's 80 epochs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from speedrun_diffusion.lightning_modules.networks.dit import count_parameters
from tests.e2e.test_configs_srdit import parse
from tests.helpers import ROOT

CONFIGS = ROOT / "configs" / "speeddiff"
MAIN = [f"{size}_{res}" for size in ("b", "l", "xl") for res in (256, 512)]


def main_config(name: str) -> list[Path]:
    """The files of a Tab. 14 model: b_256.yaml, then the size and resolution add-ons ("xl_512" → 3 files)."""
    size, res = name.split("_")
    return [CONFIGS / "b_256.yaml", *([CONFIGS / f"size_{size}.yaml"] if size != "b" else []),
            *([CONFIGS / "res_512.yaml"] if res == "512" else [])]
# SpeedDiff Tab. 7 (M parameters at 256): ViT-VAE encoder, decoder, Refined-DiT
TABLE_7 = {"b": (28.98, 28.95, 91.38), "l": (103.68, 103.65, 319.38), "xl": (218.63, 218.58, 672.23)}
TABLE_14 = {"b": ("B", "Refined-DiT-B", "logit_normal", 12, 12), "l": ("L", "Refined-DiT-L", "uniform", 24, 16),
            "xl": ("XL", "Refined-DiT-XL", "uniform", 27, 22)}


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


def _callback(config: Any, name: str) -> Any:
    return next(c for c in config.trainer.callbacks if c.class_path.endswith(name)).init_args


def build_on_meta(config: Any) -> Any:
    """The configured SpeedDiff on the meta device: LPIPS without its VGG download, no frozen-VAE file."""
    from jsonargparse import ArgumentParser

    model = config.model.as_dict()
    model["init_args"].update(frozen_vae=None, lpips={"class_path": "speedrun_diffusion.lightning_modules.losses.LPIPS",
                                                      "init_args": {"pretrained": False}})
    if model["init_args"].get("repa_pp"):
        model["init_args"]["vfm"] = {"class_path": "speedrun_diffusion.lightning_modules.networks.target_encoders.DINOv2Targets",
                                     "init_args": {"random_weights": True}}
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningModule, "model")
    with torch.device("meta"):
        return parser.instantiate_classes(parser.parse_object({"model": model})).model


def base_of(path: Path) -> list[Path]:
    """The config files to parse for ``path``: add-ons go on top of their base."""
    rel = str(path.relative_to(CONFIGS))
    if rel == "bad_model_tiny_cpu.yaml" or rel == "autoguidance/tiny_cpu_autoguidance.yaml":
        return [CONFIGS / "tiny_cpu.yaml", path]
    if path.stem.startswith("bad_model_"):
        return [*main_config(f"{path.stem.removeprefix('bad_model_')}_256"), path]
    if rel in ("repa_pp.yaml", "autoguidance/autoguidance.yaml") or rel.startswith("ablations/"):
        return [*main_config("xl_256"), path]
    if path.stem.startswith(("size_", "res_")):
        return [CONFIGS / "b_256.yaml", path]
    return [path]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_speeddiff_config_parses(path: Path):
    config = parse(*base_of(path))
    assert config.model.class_path == "speedrun_diffusion.lightning_modules.SpeedDiff"


@pytest.mark.parametrize("name", MAIN)
def test_paper_configs_match_table_14(name: str):
    size, res = name.split("_")
    vae, model, time_sampler, depth, heads = TABLE_14[size]
    config = parse(*main_config(name))
    t, hp = config.trainer, config.model.init_args
    assert t.devices * t.num_nodes * config.data.init_args.batch_size == 256 and t.max_steps == 1_000_000
    assert t.precision == "bf16-mixed" and config.data.init_args.random_flip is True
    assert (hp.vae, hp.resolution, hp.model, hp.time_sampler, hp.class_dropout_prob) == (
        vae, int(res), model, time_sampler, 0.1)
    assert (hp.mse_weight, hp.lpips_weight, hp.gan_weight, hp.kl_weight, hp.diffusion_weight, hp.tpr_mse_weight,
            hp.tpr_lpips_weight, hp.lecam_weight, hp.lecam_decay) == (1.0, 1.0, 0.1, 1e-5, 1.0, 1.0, 1.0, 0.05, 0.999)
    opt = hp.optimizer
    assert (opt.lr, tuple(opt.betas), opt.weight_decay, opt.schedule) == (1e-4, (0.9, 0.999), 0.0, "constant")
    assert (hp.sampling.sampler.class_path, hp.sampling.num_steps) == (
        "speedrun_diffusion.lightning_modules.diffusion.EulerMaruyama", 250)
    assert _callback(config, "EMA").decay == 0.9999
    assert _callback(config, "Evaluation").reference == f"data/VIRTUAL_imagenet{res}_labeled.npz"  # follows the add-on
    warmup = _callback(config, "GANWarmup")
    assert (warmup.lpips_start, warmup.disc_start, warmup.adversarial_start) == (0, 0, 0)  # GAN from step 0
    module = build_on_meta(config)
    assert module.latent_shape == (32, 16, 16) and module.tokenizer.cfg.patch_size == (16 if res == "256" else 32)
    assert (module.net.cfg.depth, module.net.cfg.num_heads) == (depth, heads)
    if res == "256":
        encoder, decoder, dit = TABLE_7[size]
        assert count_parameters(module.tokenizer.encoder) / 1e6 == pytest.approx(encoder, rel=0.01)
        assert count_parameters(module.tokenizer.decoder) / 1e6 == pytest.approx(decoder, rel=0.01)
        assert count_parameters(module.net) / 1e6 == pytest.approx(dit, rel=0.01)


@pytest.mark.parametrize("name", MAIN)
def test_bad_model_has_half_the_blocks_and_heads_and_reads_the_main_vae(name: str):
    size, res = name.split("_")
    main = parse(*main_config(name))
    config = parse(*main_config(name), CONFIGS / f"bad_model_{size}.yaml")
    hp = config.model.init_args
    depth, heads = TABLE_14[size][3:]
    assert (hp.depth, hp.num_heads, hp.hidden_size) == (depth // 2, heads // 2, 64 * (heads // 2))
    assert main.trainer.default_root_dir == f"runs/speeddiff_{size.upper()}_{res}"
    assert hp.frozen_vae == f"{main.trainer.default_root_dir}/checkpoints/last.ckpt" and hp.model == main.model.init_args.model
    assert config.trainer.max_steps == 100_100  # 20 epochs at batch 256
    assert config.trainer.default_root_dir == f"runs/speeddiff_bad_model_{size.upper()}_{res}"


def test_add_ons_switch_repa_pp_and_the_table_10_baselines():
    repa = parse(*main_config("xl_256"), CONFIGS / "repa_pp.yaml").model.init_args
    assert (repa.repa_pp, repa.repa_depth, repa.repa_latent_weight, repa.repa_diffusion_weight) == (True, 8, 1.0, 1.0)
    module = build_on_meta(parse(CONFIGS / "b_256.yaml", CONFIGS / "repa_pp.yaml"))
    assert module.repa is not None and module.vfm.resolution == 224
    cnn = build_on_meta(parse(CONFIGS / "b_256.yaml", CONFIGS / "ablations" / "cnn_vae.yaml"))
    assert type(cnn.tokenizer).__name__ == "INVAE" and cnn.latent_shape == (32, 16, 16)
    assert count_parameters(cnn.tokenizer) / 1e6 == pytest.approx(70, rel=0.01)  # Tab. 10 "CNN-VAE 70"
    dit = parse(*main_config("xl_256"), CONFIGS / "ablations" / "dit_xl1.yaml").model.init_args
    assert dit.model == "DiT-XL/1"


@pytest.mark.parametrize("addons", [["cnn_vae"], ["dit_xl1"], ["cnn_vae", "dit_xl1"]], ids="+".join)
@pytest.mark.parametrize("base", ["b_256", "xl_256"])
def test_table_10_ablations_train_80_epochs(base: str, addons: list[str]):
    # Tab. 10 trains 80 epochs; Tab. 14 counts 1M steps at batch 256 as 200 epochs, so 80 epochs are 400K steps
    base_config = parse(*main_config(base))
    steps_per_epoch = base_config.trainer.max_steps // 200
    config = parse(*main_config(base), *(CONFIGS / "ablations" / f"{a}.yaml" for a in addons))
    t = config.trainer
    assert t.devices * t.num_nodes * config.data.init_args.batch_size == 256
    assert t.max_steps == 80 * steps_per_epoch == 400_000
    assert t.default_root_dir != base_config.trainer.default_root_dir  # never writes into the main run's folder
    assert config.model.init_args.optimizer.schedule == "constant"  # so the 1M-step main run at step 400K is Tab. 10's row
