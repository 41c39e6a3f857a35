"""DataLoader conventions shared by every datamodule.

Training: shuffled by a generator seeded from the datamodule's seed (so a run's batch order is
reproducible), ``drop_last=True`` (every step sees a full batch, as the papers' step counts assume).
Evaluation: dataset order, nothing dropped. Workers are persistent when there are any, so the
per-epoch worker start-up cost is paid once.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def train_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int) -> DataLoader:
    """Shuffled (seeded generator), drop_last, persistent-worker loader for training."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Ordered loader that keeps every item, for validation, test and prediction."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def check_loader_args(batch_size: int, num_workers: int) -> None:
    """Raise ValueError for a non-positive batch size or a negative worker count."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
