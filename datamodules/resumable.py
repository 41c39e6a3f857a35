"""Training loaders that resume to the exact sample after a checkpoint (mid-epoch fault tolerance).

Order. Epoch ``e`` visits the dataset in a global order that depends only on ``(seed, e)``: a
``torch.randperm`` drawn from a generator seeded with ``seed + e`` (or ``0 … N-1`` unshuffled).
With W ranks, the first ``(N // W) · W`` positions are dealt round-robin (rank r takes positions
r, r + W, …), the remainder is dropped, so every rank sees the same number of samples.

Position. :class:`ResumableDataLoader` counts the batches it has handed out in the current epoch.
Its ``state_dict()`` — which Lightning's fit loop stores in every checkpoint for loaders that have
one — records ``(epoch, samples)`` with ``samples`` the global offset into the epoch's order
(batches · batch_size · W). ``load_state_dict`` makes the next iteration of that epoch start at
that offset, so a resumed run replays exactly the batches the interrupted run had not trained on.
Lightning calls ``set_epoch`` on the sampler before each epoch; a stored position applies only if
the epoch it was saved in is the one being iterated.

Lightning's fetcher does not pre-fetch from loaders with a length, so at checkpoint time the
number of batches handed out equals the number of batches trained on.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def _world() -> tuple[int, int]:
    """(world size, rank) of the default process group, (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class EpochPermutationSampler(DistributedSampler):
    """Seeded per-epoch permutation, dealt round-robin over ranks, that can start at a global offset.

    A ``DistributedSampler`` subclass so Lightning keeps it (it only wraps samplers that are not),
    which also makes it the distributed sampler: unless given, the world size and rank are the
    default process group's, looked up whenever the sampler is used (so a loader built before the
    process group exists, e.g. at the top of a launched script, still shards correctly).
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self._fixed = (num_replicas, rank)
        world, me = _world()
        super().__init__(dataset, num_replicas=num_replicas or world, rank=me if rank is None else rank,
                         shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0  # global offset into the epoch's order for the next iteration

    def sync_world(self) -> None:
        """Refresh world size, rank and per-rank length from the process group (unless fixed at construction)."""
        world, me = _world()
        self.num_replicas = self._fixed[0] or world
        self.rank = me if self._fixed[1] is None else self._fixed[1]
        self.num_samples = len(self.dataset) // self.num_replicas
        self.total_size = self.num_samples * self.num_replicas

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's global visiting order (all ranks)."""
        size = len(self.dataset)
        if not self.shuffle:
            return torch.arange(size)
        return torch.randperm(size, generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self) -> Iterator[int]:
        self.sync_world()
        start, self.start = self.start, 0
        order = self.order(self.epoch)
        stop = self.num_samples * self.num_replicas
        return iter(order[start + self.rank:stop:self.num_replicas].tolist())

    def __len__(self) -> int:
        # the whole epoch, also when resuming: Lightning counts the already-trained batches itself
        self.sync_world()
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochPermutationSampler` with ``state_dict`` / ``load_state_dict``.

    The state is ``{"epoch", "samples", "batch_size", "num_replicas", "dataset_size", "seed"}``;
    loading it makes the next iteration of the same epoch skip the ``samples`` already consumed.
    A full pass (``for batch in loader``) advances the sampler's epoch, so plain loops reshuffle too.
    """

    sampler: EpochPermutationSampler

    def __init__(self, dataset: Dataset, batch_size: int, sampler: EpochPermutationSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, EpochPermutationSampler):
            raise TypeError(f"ResumableDataLoader needs an EpochPermutationSampler, got {type(sampler).__name__}")
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self._epoch = sampler.epoch
        self._batches = 0  # batches handed out in epoch ``_epoch``
        self._resume: tuple[int, int] | None = None  # (epoch, global sample offset) from a checkpoint

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.sampler
        sampler.sync_world()
        skip = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            skip = self._resume[1]
        self._resume = None
        per_batch = self.batch_size * sampler.num_replicas
        sampler.start = skip
        self._epoch, self._batches = sampler.epoch, skip // per_batch
        for batch in super().__iter__():
            self._batches += 1
            yield batch
        sampler.set_epoch(self._epoch + 1)

    def state_dict(self) -> dict[str, int]:
        """Position after the batches handed out so far (what Lightning checkpoints)."""
        return {
            "epoch": self._epoch,
            "samples": self._batches * self.batch_size * self.sampler.num_replicas,
            "batch_size": int(self.batch_size),
            "num_replicas": self.sampler.num_replicas,
            "dataset_size": len(self.dataset),
            "seed": self.sampler.seed,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``'s position; a different data set or seed restarts the epoch (with a warning)."""
        self.sampler.sync_world()
        size, seed = len(self.dataset), self.sampler.seed
        if state.get("dataset_size") != size or state.get("seed") != seed:
            warnings.warn(f"training loader state is for {state.get('dataset_size')} samples and seed "
                          f"{state.get('seed')}, this loader has {size} and seed {seed}: the resumed epoch "
                          "starts from its beginning", stacklevel=2)
            self._resume = (int(state.get("epoch", 0)), 0)
            self.sampler.set_epoch(int(state.get("epoch", 0)))
            return
        if (state["batch_size"], state["num_replicas"]) != (self.batch_size, self.sampler.num_replicas):
            warnings.warn(f"resuming with batch_size x ranks = {self.batch_size} x {self.sampler.num_replicas} "
                          f"instead of {state['batch_size']} x {state['num_replicas']}: the epoch continues at "
                          f"sample {state['samples']}, but the trainer's batch count of this epoch no longer "
                          "matches", stacklevel=2)
        self._resume = (int(state["epoch"]), int(state["samples"]))
        self.sampler.set_epoch(int(state["epoch"]))
