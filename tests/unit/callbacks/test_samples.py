"""`LogSamples` writes every grid as a PNG in the run folder and gives it to each logger by that logger's own image
API (TensorBoard ``add_image``, ``log_image`` of W&B-style loggers), warning once for loggers that take none (CSV);
``validate`` of a checkpoint logs at the checkpoint's step; the learning rate is logged without any logger callback."""
from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger

from speedrun_diffusion.callbacks import LogSamples
from speedrun_diffusion.callbacks.samples import log_grid
from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules import SiT

SIT = dict(model="SiT-S/4", input_size=16, num_classes=4, depth=1, hidden_size=32, num_heads=2,
           sampling={"num_steps": 2})


class ImageLogger(Logger):
    """A logger with a W&B-style ``log_image(key, images, step)``, recording what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, tuple, int]] = []

    name, version = "images", 0

    def log_image(self, key, images, step=None):
        self.images.append((key, images[0].shape, step))

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _fit(tmp_path, loggers, steps: int = 2):
    data = SyntheticDataModule(resolution=16, num_classes=4, train_size=8, val_size=4, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=loggers, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[LogSamples(every_n_steps=1, num_samples=4)])
    model = SiT(**SIT)
    trainer.fit(model, datamodule=data)
    return trainer, model, data


def test_grids_go_to_every_image_logger_and_always_to_png(tmp_path):
    images = ImageLogger()
    with pytest.warns(UserWarning, match="CSVLogger takes no images"):
        _fit(tmp_path, [images, CSVLogger(tmp_path)])
    assert [(key, shape[-1], step) for key, shape, step in images.images] == [("samples", 3, 1), ("samples", 3, 2)]
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["samples_step0000001.png",
                                                                           "samples_step0000002.png"]
    grid = torch.rand(3, 8, 8)

    class Board:
        def __init__(self):
            self.calls = []

        def add_image(self, tag, image, global_step):
            self.calls.append((tag, tuple(image.shape), global_step))

    board = type("TB", (), {"experiment": Board()})()
    assert log_grid(board, grid, 5) and board.experiment.calls == [("samples", (3, 8, 8), 5)]


def test_no_logger_still_writes_pngs_and_trains(tmp_path):
    trainer, _, _ = _fit(tmp_path, False)
    assert trainer.global_step == 2 and len(list((tmp_path / "samples").glob("*.png"))) == 2


def test_validate_of_a_checkpoint_logs_at_its_step_and_lr_is_logged(tmp_path):
    trainer, model, data = _fit(tmp_path, CSVLogger(tmp_path, name="fit"), steps=3)
    assert "train/lr" in trainer.callback_metrics  # logged by the recipe, no LearningRateMonitor needed
    trainer.save_checkpoint(tmp_path / "sit.ckpt")
    checker = L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path, name="validate"), enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1)
    checker.validate(SiT(**SIT), datamodule=data, ckpt_path=tmp_path / "sit.ckpt")
    rows = list(csv.DictReader(open(next((tmp_path / "validate").rglob("metrics.csv")))))
    assert rows and all(int(r["step"]) == 3 for r in rows if r.get("val/loss"))
