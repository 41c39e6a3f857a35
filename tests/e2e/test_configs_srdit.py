"""Every configs/srdit YAML parses through the CLI; the paper configs build on the meta device with the official
parameter counts (read from reference/srdit/param_counts.json) and hyper-parameters (reference README); each
Table 1 ablation row flips exactly its switches; the tiny config fits a few steps through the CLI, logging the
four loss terms, sample grids and ``last.ckpt``."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from speedrun_diffusion.lightning_modules.cli import build_cli
from speedrun_diffusion.lightning_modules.networks.dit import count_parameters, official_parameter_count
from speedrun_diffusion.lightning_modules.networks.sprint import SprintDiT
from tests.conftest import REFERENCE_DIR
from tests.helpers import ROOT

CONFIGS = ROOT / "configs" / "srdit"
ABLATIONS = sorted((CONFIGS / "ablations").glob("*.yaml"))
COUNTS_PATH = REFERENCE_DIR / "srdit" / "param_counts.json"
COUNTS = json.loads(COUNTS_PATH.read_text()) if COUNTS_PATH.exists() else {}


class _ParseOnly(LightningCLI):
    """The project's CLI parser without instantiating anything (paper configs name GPUs and data on disk)."""

    def instantiate_classes(self) -> None:
        pass


def parse(*configs: Path, extra: tuple[str, ...] = ()) -> Any:
    import speedrun_diffusion.callbacks  # noqa: F401
    import speedrun_diffusion.datamodules  # noqa: F401
    import speedrun_diffusion.lightning_modules  # noqa: F401

    args = [a for c in configs for a in ("--config", str(c))] + list(extra)
    cli = _ParseOnly(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     parser_kwargs={"parser_mode": "omegaconf+"}, args=args, run=False)
    return cli.config


def build_model_on_meta(config: Any) -> Any:
    """The configured LightningModule on the meta device, without local weight files or downloads."""
    from jsonargparse import ArgumentParser

    model = config.model.as_dict()
    init = model["init_args"]
    init["tokenizer_weights"] = None
    init["target_encoder"]["init_args"]["random_weights"] = True
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningModule, "model")
    with torch.device("meta"):
        return parser.instantiate_classes(parser.parse_object({"model": model})).model


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


@pytest.mark.parametrize("resolution", [256, 512])
def test_paper_config_matches_official(resolution: int):
    config = parse(CONFIGS / f"b1_{resolution}.yaml")
    t = config.trainer
    assert (t.precision, t.max_steps, t.gradient_clip_val) == ("bf16-mixed", 400_000, 1.0)
    assert t.devices * t.num_nodes * config.data.init_args.batch_size == 256  # global batch
    assert config.data.class_path == "speedrun_diffusion.datamodules.LatentDataModule" and config.data.init_args.with_images
    ema = [c for c in t.callbacks if c.class_path == "speedrun_diffusion.callbacks.EMA"][0]
    assert ema.init_args.decay == 0.9999
    evaluation = [c for c in t.callbacks if c.class_path == "speedrun_diffusion.callbacks.Evaluation"][0].init_args
    assert evaluation.metrics[0] == "kdd" and evaluation.num_samples == 50_000 and evaluation.num_steps == 250
    ckpt = [c for c in t.callbacks if c.class_path.endswith("ModelCheckpoint")][0].init_args
    assert ckpt.dirpath == f"runs/srdit_b1_{resolution}/checkpoints"  # interpolation followed default_root_dir

    module = build_model_on_meta(config)
    hp = config.model.init_args
    opt = hp.optimizer
    assert (opt.lr, tuple(opt.betas), opt.weight_decay, opt.warmup_steps, opt.schedule) == (1e-4, (0.9, 0.999), 0.0, 0,
                                                                                            "constant")
    assert {k: module.loss_fn.weights[k] for k in ("repa", "cls", "cfm")} == {"repa": 0.5, "cls": 0.03, "cfm": 0.05}
    cfg = module.net.cfg
    assert module.shift == pytest.approx((cfg.in_channels * cfg.input_size**2 / 4096) ** 0.5)
    assert module.target_encoder.encoder.pos_embed.shape[1] == 1 + cfg.num_tokens  # resampled to the latent grid
    ref = COUNTS.get(f"SR-DiT-B/1_{resolution}")
    if ref is None:
        pytest.skip(f"no SR-DiT-B/1_{resolution} entry in {COUNTS_PATH}")
    assert (cfg.input_size, cfg.in_channels, cfg.num_classes) == tuple(ref["kwargs"][k] for k in
                                                                         ("input_size", "in_channels", "num_classes"))
    assert isinstance(module.net, SprintDiT)
    assert official_parameter_count(module.net) == ref["parameters_total"]
    assert count_parameters(module.net, trainable_only=True) == ref["parameters_trainable"]
    assert count_parameters(module.tokenizer) == COUNTS["INVAE_f16d32"]["parameters_total"]


# each row adds one improvement to the previous one (SR-DiT Table 1)
SWITCHES = ("sprint", "rmsnorm", "rope", "qk_norm", "value_residual", "cfm_weight", "time_shift")


def _switches(module: Any) -> dict[str, bool]:
    cfg = module.net.cfg
    return {"sprint": isinstance(module.net, SprintDiT), "rmsnorm": cfg.norm == "rmsnorm", "rope": cfg.rope,
            "qk_norm": cfg.qk_norm, "value_residual": cfg.value_residual,
            "cfm_weight": module.loss_fn.weights["cfm"] > 0, "time_shift": module.shift != 1.0}


def test_ablation_rows_add_one_improvement_each():
    assert len(ABLATIONS) == len(SWITCHES) + 1
    rows = [_switches(build_model_on_meta(parse(CONFIGS / "b1_256.yaml", path))) for path in ABLATIONS]
    assert not any(rows[0].values())  # REG + INVAE: none of the improvements
    for i, (prev, row) in enumerate(zip(rows, rows[1:])):
        assert [k for k in SWITCHES if row[k] != prev[k]] == [SWITCHES[i]], ABLATIONS[i + 1].name
    assert all(rows[-1].values())  # the last row is the full recipe (= b1_256.yaml)
    assert rows[-1] == _switches(build_model_on_meta(parse(CONFIGS / "b1_256.yaml")))


@pytest.mark.parametrize("name", ["cache_latents_256", "cache_latents_512"])
def test_cache_configs_parse(name: str):
    config = parse(CONFIGS / f"{name}.yaml")
    writer = [c for c in config.trainer.callbacks if c.class_path == "speedrun_diffusion.callbacks.LatentWriter"][0].init_args
    assert config.model.class_path == "speedrun_diffusion.lightning_modules.LatentEncoder" and config.model.init_args.mode == "sample"
    assert writer.save_images and config.data.init_args.source.init_args.random_flip is False
    assert writer.output_dir.endswith(name.replace("cache_latents", "srdit_invae") + "/train")


TINY = CONFIGS / "tiny_cpu.yaml"
FAST = ["--model.init_args.hidden_size", "32", "--model.init_args.projector_dim", "32",
        "--model.init_args.sampling.num_steps", "2", "--data.init_args.batch_size", "4", "--data.init_args.val_size", "8",
        "--data.init_args.resolution", "16", "--model.init_args.input_size", "4",
        "--model.init_args.target_encoder.init_args.resolution", "16", "--trainer.num_sanity_val_steps", "0",
        "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar",
        "false", "--trainer.log_every_n_steps", "1", "--trainer.max_steps", "3"]


def test_tiny_fit_logs_four_loss_terms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", str(TINY), *FAST])
    assert cli.trainer.global_step == 3
    logged = cli.trainer.callback_metrics
    for term in ("velocity", "repa", "cls", "cfm"):
        assert torch.isfinite(logged[f"train/{term}"]) and f"val/{term}" in logged
    assert (tmp_path / "runs" / "srdit_tiny_cpu" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "runs" / "srdit_tiny_cpu" / "samples").glob("*.png"))  # LogSamples at the end of fit
