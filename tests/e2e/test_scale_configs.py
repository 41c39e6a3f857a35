"""The scale-out add-ons (configs/scale/*.yaml) compose with every recipe's paper configs through the CLI parser.

No GPU: the configs are parsed, the strategy is built, the data-parallel size checked against
num_nodes × devices, and each recipe's model is instantiated on the meta device with the add-on's
``sharding.param_dtype`` (pretrained weights and downloads switched off for that, as everywhere in the tests).
"""
from __future__ import annotations

import functools
import importlib

import lightning as L
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from speedrun_diffusion.lightning_modules.cli import SpeedrunCLI
from tests.helpers import ROOT

SCALE = sorted((ROOT / "configs" / "scale").glob("*.yaml"))
# paper configs: every recipe's GPU training configs (not the tiny CPU runs, the latent caching or the ablation rows)
# (add-ons such as configs/speeddiff/bad_model_*.yaml name no model class and are composed with their base config)
PAPER = sorted(p for p in (ROOT / "configs").glob("*/*.yaml")
               if p.parent.name != "scale" and p.stem != "tiny_cpu" and not p.stem.startswith("cache_latents")
               and "class_path" in (yaml.safe_load(p.read_text()).get("model") or {}))
# construction without files or downloads (meta device): per model class, overrides that skip pretrained weights
NO_WEIGHTS = {
    "SRDiT": ["--model.init_args.tokenizer_weights=null",
              "--model.init_args.target_encoder.init_args.random_weights=true"],
    "RAEStage2": ["--model.init_args.stage1_checkpoint=null", "--model.init_args.official_rae=false",
                  "--model.init_args.stats_path=null"],
    "SpeedDiff": ['--model.init_args.lpips={"class_path": "speedrun_diffusion.lightning_modules.losses.LPIPS", '
                  '"init_args": {"pretrained": false}}'],
}


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["speedrun-diffusion"])  # LightningCLI(args=...) warns about pytest's argv


class ParseOnlyCLI(SpeedrunCLI):
    """The project's CLI, stopped after parsing (nothing instantiated)."""

    def instantiate_classes(self) -> None:
        pass


@functools.lru_cache(maxsize=None)
def parse(*args: str):
    import speedrun_diffusion.callbacks  # noqa: F401
    import speedrun_diffusion.datamodules  # noqa: F401
    import speedrun_diffusion.lightning_modules  # noqa: F401

    cli = ParseOnlyCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       parser_kwargs={"parser_mode": "omegaconf+"}, args=list(args), run=False)
    return cli.config


def instantiate(class_path: str, init_args) -> object:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**dict(init_args))


def test_there_are_add_ons_and_paper_configs():
    assert {p.stem for p in SCALE} >= {"fsdp2_8gpu", "ddp_8gpu", "multinode"}
    assert {p.parent.name for p in PAPER} >= {"sid2", "srdit", "rae", "speeddiff"}


@pytest.mark.parametrize("scale", SCALE, ids=lambda p: p.stem)
@pytest.mark.parametrize("paper", PAPER, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_add_on_composes_with_paper_config(paper, scale):
    cfg = parse("--config", str(paper), "--config", str(scale))
    trainer = cfg.trainer
    assert trainer.accelerator == "gpu" and trainer.precision == "bf16-mixed"
    strategy = instantiate(trainer.strategy.class_path, trainer.strategy.init_args)
    if type(strategy).__name__ == "ModelParallelStrategy":
        assert strategy._data_parallel_size == trainer.num_nodes * trainer.devices
        assert strategy._tensor_parallel_size == 1
        assert cfg.model.init_args.sharding.param_dtype == "bfloat16"
    else:
        assert type(strategy).__name__ == "DDPStrategy"
    # everything else comes from the paper config unchanged
    alone = parse("--config", str(paper))
    assert cfg.model.class_path == alone.model.class_path and cfg.data == alone.data
    assert trainer.max_steps == alone.trainer.max_steps


@pytest.mark.parametrize("paper", sorted({p.parent.name: p for p in PAPER}.values()), ids=lambda p: p.parent.name)
def test_recipe_builds_on_meta_with_the_fsdp2_add_on(paper):
    name = parse("--config", str(paper)).model.class_path.rpartition(".")[2]
    cfg = parse("--config", str(paper), "--config", str(ROOT / "configs" / "scale" / "fsdp2_8gpu.yaml"),
                *NO_WEIGHTS.get(name, []))
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningModule, "model")
    with torch.device("meta"):
        model = parser.instantiate(parser.parse_object({"model": cfg.model.as_dict()})).model
    assert model.sharding_config.param_dtype == "bfloat16"
    units = model.shard_units()
    assert units and all(next(u.parameters()).is_meta for u in units)
    # every trained parameter is inside a sharded root (the denoiser; SpeedDiff: also its VAE, adapters and
    # discriminator); frozen encoders stay outside (replicated)
    sharded = {id(p) for root in model.shard_roots() for p in root.parameters()}
    assert all(id(p) in sharded for p in model.trainable_parameters())
    assert all(id(p) not in sharded for m in model.frozen_modules() for p in m.parameters())
