"""Transformer feed-forward layers: GELU MLP (ViT/DiT) and SwiGLU (Shazeer 2020, used by LightningDiT)."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """fc2(GELU_tanh(fc1(x))): the DiT/SiT block MLP (SR-DiT README "Network": fc1 D→4D, GELU(tanh), fc2).

    Submodule names ``fc1``/``fc2`` follow timm's ``Mlp`` so official DiT/SiT checkpoints load key-for-key.
    """

    def __init__(
        self, dim: int, hidden_dim: int, out_dim: int | None = None, bias: bool = True, approximate: str = "tanh"
    ) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = nn.GELU(approximate=approximate)  # "none" = exact erf GELU (ViT/MAE/DINOv2, RAE decoder)
        self.fc2 = nn.Linear(hidden_dim, out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """w3(SiLU(a) ⊙ b) with [a, b] = w12(x): the SwiGLU FFN of Shazeer 2020 ("GLU Variants", eq. 6).

    The two input projections are fused in one ``w12`` Linear (first half gated by SiLU, second half
    linear) as in LightningDiT / xformers ``SwiGLU``; the width is usually ``swiglu_hidden_dim``.
    """

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        self.w12 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.w3 = nn.Linear(hidden_dim, out_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def swiglu_hidden_dim(dim: int, mlp_ratio: float, multiple_of: int = 1) -> int:
    """Hidden width int(2/3 · dim · mlp_ratio), rounded up to a multiple of ``multiple_of``.

    The 2/3 factor keeps a SwiGLU (three matrices) at the parameter count of a GELU MLP with ratio
    ``mlp_ratio`` (two matrices) — Shazeer 2020 §2, LLaMA / LightningDiT convention.
    """
    hidden = int(2 / 3 * dim * mlp_ratio)
    return multiple_of * math.ceil(hidden / multiple_of)
