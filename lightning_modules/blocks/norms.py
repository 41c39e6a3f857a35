"""Root-mean-square layer normalisation (Zhang & Sennrich 2019), as used by SR-DiT and LightningDiT."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · w over the last dimension (RMSNorm, Zhang & Sennrich 2019, eq. 4).

    SR-DiT uses two flavours (SR-DiT README "Network"): weight-free block/final norms with eps 1e-6,
    and QK-norms with a weight and ``eps=None``, which is torch's default: the machine epsilon of the
    input dtype. Parameter name ``weight`` matches ``nn.RMSNorm`` so official state dicts load as is.
    """

    def __init__(self, dim: int, eps: float | None = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(dim))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.affine}"
