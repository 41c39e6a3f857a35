"""`LogSamples`: a grid of class-conditional samples every N training steps, to every logger that takes images
(TensorBoard, Weights & Biases, MLflow, ...) and always as a PNG in the run folder.

Labels and noise are fixed at construction (seeded), so successive grids show how the same
samples evolve. The EMA weights are used when an `EMA` callback is present. Sampling goes through
``pl_module.sample`` only (DESIGN contract) and shows a progress bar. Under multi-process
strategies every rank samples (sharded parameters need all ranks) and rank 0 logs.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from speedrun_diffusion.callbacks.ema import EMA
from speedrun_diffusion.lightning_modules.eval_mode import eval_mode


def image_grid(images: Tensor, nrow: int) -> Tensor:
    """(N, C, H, W) in [-1, 1] → one (C, H', W') grid in [0, 1] with a 2-pixel border."""
    from torchvision.utils import make_grid

    return make_grid(((images.float() + 1) / 2).clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)


def log_grid(logger: Any, grid: Tensor, step: int, key: str = "samples") -> bool:
    """Give a (C, H, W) grid in [0, 1] to a Lightning logger by its own image API: TensorBoard's ``add_image``,
    ``log_image`` of Weights & Biases / Neptune / Comet, MLflow's ``log_image`` artifact. False if it takes none
    (e.g. CSVLogger): the PNG in the run folder is then the record, said once in the log."""
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_image"):  # TensorBoard
        experiment.add_image(key, grid, global_step=step)
        return True
    image = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
    if type(logger).__name__ == "MLFlowLogger":
        experiment.log_image(logger.run_id, image, f"{key}/step{step:07d}.png")
        return True
    if callable(getattr(logger, "log_image", None)):  # WandbLogger, NeptuneLogger, CometLogger
        logger.log_image(key=key, images=[image], step=step)
        return True
    if not getattr(logger, "_speedrun_warned_images", False):
        rank_zero_warn(f"{type(logger).__name__} takes no images: sample grids are written as PNG files only")
        logger._speedrun_warned_images = True
    return False


class LogSamples(L.Callback):
    """Logs ``num_samples`` samples (labels cycle through the classes) every ``every_n_steps`` steps.

    Args:
        every_n_steps: sampling period in optimizer steps (also once at the end of fit).
        num_samples: images per grid; label k is ``k mod num_classes`` (balanced, as the papers).
        nrow: images per grid row (default: one column per class up to 10).
        num_steps / sample_kwargs: forwarded to ``pl_module.sample`` (e.g. ``guidance_scale``).
        seed: seed of the fixed noise.
        save_dir: where the PNG grids go (``samples_step{N}.png``); default ``<trainer.default_root_dir>/samples``.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 16,
        nrow: int | None = None,
        num_steps: int | None = None,
        sample_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        save_dir: str | None = None,
    ) -> None:
        if every_n_steps < 1 or num_samples < 1:
            raise ValueError("every_n_steps and num_samples must be >= 1")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.nrow = nrow
        self.num_steps = num_steps
        self.sample_kwargs = dict(sample_kwargs or {})
        self.seed = seed
        self.save_dir = save_dir
        self._last_logged_step = -1

    def labels(self, num_classes: int) -> Tensor:
        return torch.arange(self.num_samples) % num_classes

    @torch.no_grad()
    def make_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
        """Sample with fixed labels / noise (EMA weights if available) and return the grid."""
        num_classes = int(pl_module.num_classes)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        kwargs = dict(self.sample_kwargs)
        if self.num_steps is not None:
            kwargs["num_steps"] = self.num_steps
        ema = EMA.find(trainer)
        with eval_mode(pl_module), (ema.swapped(pl_module) if ema is not None else contextlib.nullcontext()):
            images = pl_module.sample(self.labels(num_classes), generator=generator, progress=True, **kwargs)
        return image_grid(images, self.nrow or min(num_classes, 10))

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_logged_step:
            return
        self._last_logged_step = step
        grid = self.make_grid(trainer, pl_module)
        if trainer.global_rank != 0:
            return
        for logger in trainer.loggers:
            log_grid(logger, grid, step)
        from torchvision.utils import save_image

        folder = Path(self.save_dir) if self.save_dir else Path(trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, folder / f"samples_step{step:07d}.png")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)
