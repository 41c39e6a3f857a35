"""`ImageDataModule`: what every image datamodule exposes to recipes and callbacks."""
from __future__ import annotations

import lightning


class ImageDataModule(lightning.LightningDataModule):
    """Base of the image datamodules: ``num_classes``, ``resolution`` and ``image_shape`` from the
    saved hyper-parameters (subclasses call ``self.save_hyperparameters(logger=False)`` with those names: the
    data's hyper-parameters stay in checkpoints but are not logged beside the recipe's, whose ``num_classes`` may be
    larger than the data's, e.g. a 1000-class model on 10 synthetic classes)."""

    @property
    def num_classes(self) -> int:
        return self.hparams.num_classes

    @property
    def resolution(self) -> int:
        return self.hparams.resolution

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.resolution, self.resolution)
