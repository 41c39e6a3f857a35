"""Every configs/rae YAML parses through the CLI (the cache / autoguidance overlays on top of their base configs); the
paper configs build on the meta device (no weight files, no download) with the paper's / official numbers: stage 1
(RAE Table 12: batch 512, 16 epochs, Adam β (0.5, 0.9), 2e-4 → 2e-5 cosine, 1-epoch warm-up, LPIPS / disc / adv at
epochs 0 / 6 / 8, ω_G 0.75, τ 0.8; decoder and discriminator parameter counts of reference/rae_stage1) and stage 2
(App. F: batch 1024, AdamW 2e-4 β (0.9, 0.95), hold 40 epochs then linear to 2e-5, EMA 0.9995, 50 Euler steps;
DiT^DH parameter counts and latent sizes of reference/rae_stage2/param_counts.json, shift sqrt(C·H·W / 4096))."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from speedrun_diffusion.lightning_modules.networks.dit import count_parameters, official_parameter_count
from tests.conftest import REFERENCE_DIR
from tests.e2e.test_configs_srdit import parse
from tests.helpers import ROOT

CONFIGS = ROOT / "configs" / "rae"
OVERLAYS = {"chain/tiny_cpu_cache.yaml": "tiny_cpu_stage1.yaml", "autoguidance/autoguidance_256.yaml": "stage2_ditdh_xl_256.yaml"}
STAGE2_COUNTS = REFERENCE_DIR / "rae_stage2" / "param_counts.json"
STAGE1_COUNTS = REFERENCE_DIR / "rae_stage1" / "param_counts.json"


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


def _callback(config: Any, name: str) -> Any:
    return next(c for c in config.trainer.callbacks if c.class_path.endswith(name)).init_args


def build_model_on_meta(config: Any) -> Any:
    """The configured module on the meta device with every weight file / download switched off."""
    from jsonargparse import ArgumentParser

    model = config.model.as_dict()
    init = model["init_args"]
    init.update(pretrained_encoder=None)
    if model["class_path"].endswith("RAEStage1"):
        init.update(disc_backbone=None, decoder_path=None)
        init["lpips"] = {"class_path": "speedrun_diffusion.lightning_modules.losses.LPIPS", "init_args": {"pretrained": False}}
    else:
        init.update(stage1_checkpoint=None, decoder_path=None, stats_path=None, official_rae=True)
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningModule, "model")
    with torch.device("meta"):
        return parser.instantiate_classes(parser.parse_object({"model": model})).model


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_rae_config_parses(path: Path):
    base = OVERLAYS.get(str(path.relative_to(CONFIGS)))  # add-ons in sub-directories parse on top of their base
    config = parse(CONFIGS / base, path) if base else parse(path)
    assert config.model.class_path.startswith("speedrun_diffusion.lightning_modules.RAEStage")
    if path.name == "autoguidance_256.yaml":
        ag = _callback(config, "AutoGuidance")
        assert (ag.scale, tuple(ag.interval)) == (1.42, (0.0, 1.0))  # official 256-px AG sampling config
        assert len(config.trainer.callbacks) > 1  # appended to the base config's callbacks


def test_stage1_paper_config_matches_table_12():
    config = parse(CONFIGS / "stage1_dinov2b_decxl.yaml")
    t, hp = config.trainer, config.model.init_args
    assert t.devices * t.num_nodes * config.data.init_args.batch_size == 512 and t.max_epochs == 16
    assert t.gradient_clip_val is None and config.data.init_args.random_flip is False
    warmup = _callback(config, "GANWarmup")
    assert (warmup.lpips_start, warmup.disc_start, warmup.adversarial_start, warmup.unit) == (0, 6, 8, "epoch")
    opt = hp.optimizer
    assert (opt.lr, tuple(opt.betas), opt.weight_decay, opt.min_lr, opt.warmup_epochs, opt.schedule) == (
        2e-4, (0.5, 0.9), 0.0, 2e-5, 1.0, "cosine")
    assert (hp.perceptual_weight, hp.disc_weight, hp.noise_tau, hp.sigma_dist) == (1.0, 0.75, 0.8, "uniform")
    assert (hp.encoder, hp.decoder, hp.encoder_input_size, hp.decoder_patch_size) == ("dinov2", "XL", 224, 16)
    module = build_model_on_meta(config)
    assert module.tokenizer.latent_shape == (768, 16, 16) and module.net.cfg.image_size == 256
    if STAGE1_COUNTS.exists():
        counts = json.loads(STAGE1_COUNTS.read_text())
        assert count_parameters(module.net) == counts["decoders"]["ViTXL"]["params_total"]
        assert count_parameters(module.net, trainable_only=True) == counts["decoders"]["ViTXL"]["params_trainable"]
        disc = counts["discriminator"]
        assert count_parameters(module.discriminator, trainable_only=True) == disc["trainable_heads_params"]
        assert count_parameters(module.discriminator.backbone) == disc["frozen_backbone_params"]


STAGE2 = {  # config: (model preset, latent side, paper epochs, official kwargs of the param_counts entry)
    "stage2_ditdh_xl_256.yaml": ("DiTDH-XL", 16, 800, [1152, 2048]),
    "stage2_ditdh_s_256.yaml": ("DiTDH-S", 16, 20, [384, 2048]),
    "stage2_ditdh_xl_512.yaml": ("DiTDH-XL", 32, 400, [1152, 2048]),
    "stage2_ditdh_xl_512_upsample.yaml": ("DiTDH-XL", 16, 800, [1152, 2048]),
    "stage2_ditdh_xl_256_uncond.yaml": ("DiTDH-XL", 16, 200, [1152, 2048]),
}


@pytest.mark.parametrize("name", sorted(STAGE2))
def test_stage2_paper_configs(name: str):
    preset, side, epochs, widths = STAGE2[name]
    config = parse(CONFIGS / name)
    t, hp = config.trainer, config.model.init_args
    assert t.devices * t.num_nodes * config.data.init_args.batch_size == 1024 and t.max_epochs == epochs
    assert t.gradient_clip_val == 1.0 and _callback(config, "EMA").decay == 0.9995
    opt, sampling = hp.optimizer, hp.sampling
    assert (opt.lr, tuple(opt.betas), opt.weight_decay, opt.min_lr, opt.schedule, opt.hold_epochs) == (
        2e-4, (0.9, 0.95), 0.0, 2e-5, "hold_linear", 40)
    assert (hp.time_dist, sampling.num_steps, sampling.sampler.class_path, hp.class_dropout_prob) == (
        "logit_normal", 50, "speedrun_diffusion.lightning_modules.diffusion.EulerODE", 0.1)
    assert hp.unconditional is name.endswith("uncond.yaml")
    module = build_model_on_meta(config)
    assert module.latent_shape == (768, side, side) and hp.model == preset
    assert module.shift == pytest.approx(math.sqrt(768 * side * side / 4096))  # RAE Sec. 4.2
    image = 512 if "512" in name else 256
    assert module.tokenizer.decoder.cfg.image_size == image  # 512 upsample: p_d = 32 on 16 × 16 tokens
    if not STAGE2_COUNTS.exists():
        pytest.skip(f"no {STAGE2_COUNTS}")
    entry = next(e for e in json.loads(STAGE2_COUNTS.read_text())["entries"]
                 if e["kwargs"]["hidden_size"] == widths and e["kwargs"]["input_size"] == side)
    assert official_parameter_count(module.net) == entry["total"]
    assert count_parameters(module.net, trainable_only=True) == entry["trainable"]


def test_tiny_configs_chain_through_the_cache():
    stage1, cache = parse(CONFIGS / "tiny_cpu_stage1.yaml"), parse(CONFIGS / "tiny_cpu_stage1.yaml",
                                                                   CONFIGS / "chain" / "tiny_cpu_cache.yaml")
    stage2 = parse(CONFIGS / "tiny_cpu_stage2.yaml")
    writer = _callback(cache, "LatentWriter")
    assert [c.class_path for c in cache.trainer.callbacks] == ["speedrun_diffusion.callbacks.LatentWriter"]
    assert stage2.data.init_args.root == writer.output_dir
    assert stage2.model.init_args.stats_path == cache.model.init_args.stats_output
    ckpt = _callback(stage1, "AtomicModelCheckpoint")
    assert stage2.model.init_args.stage1_checkpoint == f"{ckpt.dirpath}/last.ckpt"
