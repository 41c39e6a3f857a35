"""Adaptive LayerNorm conditioning: DiT adaLN-Zero per block and PixArt-α adaLN-single (global + per-block bias)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x·(1 + scale) + shift (DiT, Peebles & Xie 2023 §3.2 "adaLN"); (B, D) shift/scale broadcast over tokens.

    Per-token (B, N, D) shift/scale are used as given.
    """
    if shift.dim() == x.dim() - 1:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


class AdaLNModulation(nn.Sequential):
    """Per-block adaLN-Zero regressor SiLU → Linear(cond_dim, num_chunks·dim) (DiT §3.2 "adaLN-Zero").

    A ``Sequential`` so its keys are ``<name>.1.weight/bias`` like the official ``adaLN_modulation``.
    With ``zero_init`` the Linear starts at zero, so every gate is 0 and each residual block starts as
    the identity. ``forward(c)`` returns ``num_chunks`` tensors of shape (B, dim), e.g. shift_msa,
    scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp (6) or shift, scale (final layer, 2).
    """

    def __init__(self, cond_dim: int, dim: int, num_chunks: int = 6, zero_init: bool = True) -> None:
        super().__init__(nn.SiLU(), nn.Linear(cond_dim, num_chunks * dim))
        self.num_chunks = num_chunks
        if zero_init:
            nn.init.zeros_(self[1].weight)
            nn.init.zeros_(self[1].bias)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        return super().forward(c).chunk(self.num_chunks, dim=-1)


class GlobalModulation(AdaLNModulation):
    """adaLN-single: one SiLU → Linear(cond_dim, num_chunks·dim) shared by all blocks (PixArt-α §2.3).

    SpeedDiff Refined-DiT (supplementary A.1.2) replaces per-block adaLN by this global layer plus a
    learnable per-block bias (``BlockModulationBias``). Computed once per network forward; returns the
    flat (B, num_chunks·dim) tensor that each block's ``BlockModulationBias`` offsets and splits.
    ``zero_init`` (default) zeroes the Linear as in adaLN-Zero, so at init the modulation is the
    per-block bias alone (PixArt-α instead draws this Linear with std 0.02 — pass ``zero_init=False``
    and initialise it yourself for that).
    """

    def forward(self, c: Tensor) -> Tensor:  # type: ignore[override]
        # the same SiLU → Linear as adaLN, computed once and left unsplit for the per-block biases
        return nn.Sequential.forward(self, c)


class BlockModulationBias(nn.Module):
    """Per-block learnable table (num_chunks, dim) added to the global modulation (PixArt-α §2.3, "adaLN-single").

    Init: SpeedDiff (supplementary A.1.2) gives no init of its own and says it follows PixArt-α, whose
    ``scale_shift_table`` starts as randn/√dim — so that is the default (gates start small but non-zero,
    the blocks differ from one another from step 0). ``zero_init=True`` gives exact adaLN-Zero blocks
    together with a zero-initialised ``GlobalModulation``. The parameter name matches PixArt's
    ``scale_shift_table``.
    """

    def __init__(self, dim: int, num_chunks: int = 6, zero_init: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.num_chunks = num_chunks
        table = torch.zeros(num_chunks, dim) if zero_init else torch.randn(num_chunks, dim) / dim**0.5
        self.scale_shift_table = nn.Parameter(table)

    def forward(self, global_mod: Tensor) -> tuple[Tensor, ...]:
        """(B, num_chunks·dim) global modulation → ``num_chunks`` tensors of shape (B, dim)."""
        mod = global_mod.unflatten(-1, (self.num_chunks, self.dim)) + self.scale_shift_table
        return mod.unbind(-2)
