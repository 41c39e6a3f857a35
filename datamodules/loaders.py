"""DataLoader conventions shared by every datamodule.

Training: a seeded per-epoch permutation (so a run's batch order is reproducible) that resumes to
the exact sample from a checkpoint (:mod:`datamodules.resumable`), ``drop_last=True`` (every step
sees a full batch, as the papers' step counts assume). Evaluation: dataset order, nothing dropped.
Workers are persistent when there are any, so the per-epoch worker start-up cost is paid once.
Both loaders draw their worker seeds from their own generator, never from torch's global RNG, so
iterating them does not change the training noise (which a resumed run restores from the checkpoint).
With ``num_classes`` every batch's labels are checked to lie in [0, num_classes).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from speedrun_diffusion.datamodules.resumable import EpochPermutationSampler, ResumableDataLoader


class LabelRangeError(ValueError):
    """A batch label lies outside [0, num_classes); the message names the data set and the label."""


def describe(dataset: Dataset) -> str:
    """Short name of a data set for error messages (its class, and its root folder if it has one)."""
    root = getattr(dataset, "root", None)
    return f"{type(dataset).__name__}({root})" if root is not None else type(dataset).__name__


class CheckedCollate:
    """``default_collate``, then check ``batch["label"]`` against [0, num_classes) (picklable for workers)."""

    def __init__(self, num_classes: int | None, source: str) -> None:
        self.num_classes = num_classes
        self.source = source

    def __call__(self, items: list[Any]) -> Any:
        batch = default_collate(items)
        labels = batch.get("label") if isinstance(batch, dict) else None
        if self.num_classes is not None and labels is not None and labels.numel():
            bad = (labels < 0) | (labels >= self.num_classes)
            if bool(bad.any()):
                value = int(labels[bad][0])
                raise LabelRangeError(
                    f"label {value} from {self.source} is outside [0, {self.num_classes}) (num_classes="
                    f"{self.num_classes}; the id {self.num_classes} is reserved for 'no class'): fix the data's "
                    "labels or raise data.init_args.num_classes / the model's num_classes"
                )
        return batch


def _collate(dataset: Dataset, num_classes: int | None) -> Callable[[list[Any]], Any]:
    return CheckedCollate(num_classes, describe(dataset))


def train_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int,
                 num_classes: int | None = None) -> ResumableDataLoader:
    """Seeded per-epoch permutation, drop_last, persistent-worker, resumable loader for training."""
    return ResumableDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochPermutationSampler(dataset, seed=seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_collate(dataset, num_classes),
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, num_classes: int | None = None) -> DataLoader:
    """Ordered loader that keeps every item, for validation, test and prediction."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),
        collate_fn=_collate(dataset, num_classes),
    )


def check_loader_args(batch_size: int, num_workers: int) -> None:
    """Raise ValueError for a non-positive batch size or a negative worker count."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
