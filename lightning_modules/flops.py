"""Multiply-add counts of a forward pass, in the convention of the papers' "GFLOPs" columns.

DiT (Peebles & Xie 2023), RAE Tab. 1b and SpeedDiff Tab. 7 report "GFLOPs" that are fvcore counts: one
"flop" per **multiply-add** of the linear layers and convolutions, plus fvcore's rough LayerNorm rule
(5 per element with an affine, 4 without). The reproduction in reference/rae_stage1/README "Parameter
counts and FLOPs" shows the papers' numbers leave out the attention score/value matmuls (an SDPA kernel
fvcore does not see). ``benchmarks/speeddiff_counts.py`` checks that this counting reproduces SpeedDiff
Tab. 7 (ViT-VAE, Refined-DiT) and its DiT-XL/1 baseline to within 0.15 %, while adding the attention
matmuls over-counts by 3–6 %. (DiT's own Tab. 4 "118.6 GFLOPs" for DiT-XL/2 does include attention: the
same 256-token network counted with it gives 118.7.)

The counter hooks modules, so it works on the meta device (no memory, no weights): build the network
under ``torch.device("meta")`` and pass meta inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speedrun_diffusion.lightning_modules.blocks import Attention, RMSNorm


@dataclass(frozen=True)
class MacCount:
    """Multiply-adds of one forward, by kind (totals over the batch)."""

    linear: int = 0
    conv: int = 0
    norm: int = 0
    attention: int = 0

    @property
    def paper(self) -> int:
        """The papers' "FLOPs": linear + conv multiply-adds + fvcore norm count, attention matmuls excluded."""
        return self.linear + self.conv + self.norm

    @property
    def total(self) -> int:
        """Everything counted, attention score/value matmuls included."""
        return self.paper + self.attention


def _norm_elements_cost(module: nn.Module, numel: int) -> int:
    """fvcore's ``norm_flop_jit``: numel × (5 with an affine, 4 without), used for every normalisation."""
    affine = getattr(module, "weight", None) is not None
    return numel * (5 if affine else 4)


def count_macs(module: nn.Module, *args, **kwargs) -> MacCount:
    """Run ``module(*args, **kwargs)`` under ``no_grad`` and count its multiply-adds (module docstring).

    Linear: rows × in × out; Conv2d: output elements × in/groups × k²; LayerNorm / RMSNorm / GroupNorm:
    fvcore's element rule; ``blocks.Attention``: 2·B·heads·N²·head_dim for q·kᵀ and attn·v (reported
    separately in ``attention``).
    """
    counts = {"linear": 0, "conv": 0, "norm": 0, "attention": 0}

    def hook(mod: nn.Module, inputs: tuple, output) -> None:
        if isinstance(mod, nn.Linear):
            counts["linear"] += output.numel() // mod.out_features * mod.in_features * mod.out_features
        elif isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            counts["conv"] += output.numel() * (mod.in_channels // mod.groups) * k
        elif isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, RMSNorm)):
            counts["norm"] += _norm_elements_cost(mod, inputs[0].numel())
        elif isinstance(mod, Attention):
            b, n, d = inputs[0].shape
            counts["attention"] += 2 * b * n * n * d

    kinds = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, RMSNorm, Attention)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            module(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return MacCount(**counts)


__all__ = ["MacCount", "count_macs"]
