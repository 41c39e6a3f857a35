"""``--trainer.logger false`` works with every shipped config (issue 22, item 5): no config carries a callback that
refuses a Trainer without a logger (Lightning's ``LearningRateMonitor`` did; the recipes log ``train/lr`` themselves),
and the tiny configs of every recipe fit through the CLI without one, still writing ``last.ckpt`` and PNG grids and
logging ``train/lr``. The library's other callbacks (``Evaluation``, ``LatentWriter``, ``AutoGuidance``) are unit-tested
under ``logger=False``."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.demos.boring_classes import BoringModel

from speedrun_diffusion.lightning_modules.cli import build_cli
from tests.e2e.test_cli import FAST as SIT_FAST
from tests.e2e.test_configs_srdit import FAST as SRDIT_FAST
from tests.e2e.test_configs_srdit import parse
from tests.helpers import CONFIGS

LOGGER_FALSE = ("--trainer.logger", "false")
# add-ons (no model class of their own) parse on top of the config they extend
BASES = {"rae/autoguidance": "rae/stage2_ditdh_xl_256.yaml", "rae/chain": "rae/tiny_cpu_stage1.yaml",
         "scale": "sit/tiny_cpu.yaml", "sid2/autoguidance/tiny_cpu_autoguidance": "sid2/tiny_cpu.yaml",
         "speeddiff/autoguidance/tiny_cpu": "speeddiff/tiny_cpu.yaml", "speeddiff/bad_model_tiny": "speeddiff/tiny_cpu.yaml",
         "speeddiff": "speeddiff/b_256.yaml", "srdit/ablations": "srdit/b1_256.yaml"}


def _config_files(path: Path) -> list[Path]:
    config = yaml.safe_load(path.read_text()) or {}
    if "class_path" in (config.get("model") or {}):
        return [path]
    name = str(path.relative_to(CONFIGS))
    base = next((b for prefix, b in BASES.items() if name.startswith(prefix)), None)
    assert base is not None, f"{name} is an add-on without a base config in BASES"
    return [CONFIGS / base, path]


@pytest.fixture(autouse=True)
def _clean_argv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative run folders land here
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_takes_logger_false(path: Path):
    config = parse(*_config_files(path), extra=LOGGER_FALSE)
    assert config.trainer.logger is False
    parser = ArgumentParser()
    parser.add_argument("--callbacks", type=list[L.Callback])
    declared = [c.as_dict() for c in config.trainer.callbacks or []]
    callbacks = parser.instantiate_classes(parser.parse_object({"callbacks": declared})).callbacks
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=callbacks, enable_progress_bar=False,
                        enable_model_summary=False)
    module = BoringModel()
    for callback in callbacks:
        if type(callback).__module__.startswith("speedrun_diffusion."):
            continue  # the library's callbacks need a recipe: the fits below and their unit tests run them logger-less
        # the hooks where Lightning's logger-bound callbacks refuse a Trainer without a logger
        callback.setup(trainer, module, "fit")
        callback.on_fit_start(trainer, module)
        callback.on_train_start(trainer, module)


COMMON = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
          "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--data.init_args.batch_size", "4", "--data.init_args.val_size", "8",
          "--model.init_args.sampling.num_steps", "2"]
TINY_FITS = {"sit/tiny_cpu.yaml": SIT_FAST, "srdit/tiny_cpu.yaml": SRDIT_FAST, "sid2/tiny_cpu.yaml": [],
             "speeddiff/tiny_cpu.yaml": []}


@pytest.mark.parametrize("name", sorted(TINY_FITS))
def test_tiny_config_fits_without_a_logger(name: str, tmp_path: Path):
    cli = build_cli(["fit", "--config", str(CONFIGS / name), *TINY_FITS[name], *COMMON, *LOGGER_FALSE,
                     "--trainer.default_root_dir", str(tmp_path / "run")])
    assert cli.trainer.logger is None and cli.trainer.global_step == 2
    assert "train/lr" in cli.trainer.callback_metrics  # logged by the recipe, no LearningRateMonitor
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "run" / "samples").glob("*.png"))  # grids still reach the run folder
