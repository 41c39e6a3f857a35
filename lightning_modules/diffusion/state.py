"""The sampler state: one tensor, or a tuple of tensors integrated in parallel.

SR-DiT integrates its latent and its REG cls token with the same time grid (reference/srdit
README "Sampler and guidance"); samplers and guidance therefore treat a state as a tuple of
tensors sharing the batch dimension, and a plain tensor as the one-element case. Denoisers return
the same structure as the state they receive.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from torch import Tensor

__all__ = ["State", "state_parts", "pack_state"]

State = Union[Tensor, tuple[Tensor, ...]]
"""One tensor, or a tuple of tensors with a common leading batch dimension."""


def state_parts(state: State | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The tensors of a state, in order (a plain tensor is a one-element state)."""
    return (state,) if isinstance(state, Tensor) else tuple(state)


def pack_state(parts: Sequence[Tensor], like: State | Sequence[Tensor]) -> State:
    """Parts back in the structure of ``like``: a tensor if ``like`` is one, else a tuple."""
    return parts[0] if isinstance(like, Tensor) else tuple(parts)
