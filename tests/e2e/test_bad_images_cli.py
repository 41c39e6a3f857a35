"""A decompression bomb on the command line (issue 21, item 4): a ~100-byte PNG whose header claims 30000x30000
pixels stops ``fit`` with an UnsupportedImageError naming it (PIL's DecompressionBombError names no file), and with
``skip_corrupt: true`` the run skips it, trains, and names it in the log."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from speedrun_diffusion.datamodules.imagenet import UnsupportedImageError
from speedrun_diffusion.lightning_modules.cli import build_cli
from tests.helpers import ROOT
from tests.unit.datamodules.test_imagenet import decompression_bomb

TINY = str(ROOT / "configs" / "sit" / "tiny_cpu.yaml")
FAST = ["--model.init_args.depth", "1", "--model.init_args.hidden_size", "32", "--model.init_args.num_heads", "2",
        "--model.init_args.sampling.num_steps", "2", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.max_steps", "3"]


@pytest.fixture()
def image_config(tmp_path, monkeypatch) -> Path:
    """An ImageFolder tree of 2 classes x 4 small PNGs plus one decompression bomb, and the data config reading it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            pixels = np.random.default_rng(i).integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    (tmp_path / "images" / "a" / "0_bomb.png").write_bytes(decompression_bomb(30000, 30000))
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  class_path: ImageNetDataModule\n  init_args: {root: images, resolution: 16, "
                      "batch_size: 4, num_workers: 0, num_classes: 2}\n")
    return config


def test_a_decompression_bomb_stops_fit_naming_the_file(image_config):
    with pytest.raises(UnsupportedImageError, match=r"image file images/a/0_bomb.png claims more pixels than PIL's "
                                                    r"decompression-bomb limit"):
        build_cli(["fit", "--config", TINY, "--config", str(image_config), *FAST, "--trainer.default_root_dir", "a"])


def test_skip_corrupt_skips_the_bomb_trains_and_names_it_in_the_log(image_config, caplog):
    with caplog.at_level(logging.WARNING, logger="speedrun_diffusion.datamodules.imagenet"):
        cli = build_cli(["fit", "--config", TINY, "--config", str(image_config), *FAST,
                         "--trainer.default_root_dir", "b", "--data.init_args.skip_corrupt", "true"])
    assert cli.trainer.global_step == 3
    assert cli.datamodule.train_set.skipped_files == {"images/a/0_bomb.png"}
    assert any("skip_corrupt: skipped an unreadable image" in r.getMessage() and "images/a/0_bomb.png" in r.getMessage()
               for r in caplog.records)
