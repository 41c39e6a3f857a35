"""FSDP2 sharding of a recipe (``ModelParallelStrategy``): each block its own unit, then each trained root.

``configure_model`` of every recipe calls :func:`fully_shard_recipe` with its ``shard_units()`` (one FSDP unit per
transformer / ResBlock, so only one block's full weights exist at a time) and ``shard_roots()`` (the modules whose
parameters are trained: the denoiser; SpeedDiff adds its VAE, adapters and discriminator). Frozen modules
(tokenizers, DINOv2 / representation targets) stay replicated: they hold no gradients or optimizer state, so
sharding them would save only their weights while adding an all-gather to every forward (docs/scaling.md).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["ShardingConfig", "fully_shard_recipe"]


@dataclass(frozen=True)
class ShardingConfig:
    """A recipe's ``sharding`` argument group (used under ``ModelParallelStrategy``; ignored otherwise).

    Args:
        param_dtype: FSDP2's compute dtype of the gathered parameters ("bfloat16" halves the all-gathers; None:
            the parameters' own fp32). Gradients are always reduced in float32.
    """

    param_dtype: Literal["float32", "bfloat16"] | None = None

    def __post_init__(self) -> None:
        if self.param_dtype not in (None, "float32", "bfloat16"):
            raise ValueError(f"sharding.param_dtype must be null, 'float32' or 'bfloat16', got {self.param_dtype!r}")


def fully_shard_recipe(
    mesh: object,
    units: Iterable[nn.Module],
    roots: Sequence[nn.Module],
    cfg: ShardingConfig,
    reshard_root_after_forward: Callable[[nn.Module], bool] = lambda root: True,
) -> None:
    """``fully_shard`` every unit, then every root, on the mesh's data-parallel dimension (the whole mesh if it
    names none), computing in ``cfg.param_dtype`` and reducing gradients in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    names = getattr(mesh, "mesh_dim_names", None)
    dp_mesh = mesh["data_parallel"] if names and "data_parallel" in names else mesh
    param_dtype = getattr(torch, cfg.param_dtype) if cfg.param_dtype else None
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for unit in units:
        fully_shard(unit, mesh=dp_mesh, mp_policy=policy)
    for root in roots:
        fully_shard(root, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_root_after_forward(root))
