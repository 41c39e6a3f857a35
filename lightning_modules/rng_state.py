"""Random-number state of a run, so a resumed run draws the same noise as an uninterrupted one.

Checkpoints carry the torch CPU (and CUDA), numpy and ``random`` states — under data parallelism every rank's,
since a sharded checkpoint keeps one copy of non-tensor entries — restored when training starts. A fresh
multi-rank run gives every data-parallel rank its own torch stream (:func:`decorrelate_rank_rng`).
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_states", "decorrelate_rank_rng", "restore_rng_states"]


def capture_rng_states() -> dict[str, Any]:
    """torch CPU (and CUDA), numpy and ``random`` generator states as tensors and plain Python values
    (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states` (entries that are missing are left alone)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def decorrelate_rank_rng(rank: int) -> None:
    """Give data-parallel rank ``rank`` > 0 its own torch stream (CPU and CUDA), derived from the seed.

    ``seed_everything`` (and Lightning's re-seeding at process-group set-up) gives every rank the same
    seed: without this each rank would draw the same noise and t for its shard of the global batch,
    shrinking the effective noise batch by the number of ranks. Rank 0 keeps its stream, so a
    single-process run is unchanged."""
    if rank > 0:
        torch.manual_seed((torch.initial_seed() + 1_000_003 * rank) % 2**63)
