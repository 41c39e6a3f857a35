"""The plain pre-norm ViT layer shared by RAE's frozen encoders and its ViT decoder (RAE Sec. 3, App. E)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks.attention import Attention
from speedrun_diffusion.lightning_modules.blocks.mlp import Mlp


class LayerScale(nn.Module):
    """x · γ with a learned per-channel γ (CaiT, Touvron et al. 2021, eq. 3; DINOv2 ``layer_scale*``)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class ViTLayer(nn.Module):
    """h = x + γ₁·Attn(LN₁ x);  x' = h + γ₂·MLP(LN₂ h)  (ViT, Dosovitskiy et al. 2021, eqs. 2-3).

    γ are LayerScales (DINOv2) or identities (SigLIP, MAE, the RAE decoder); the GELU is exact
    (``"none"``) or tanh-approximate; every LayerNorm has affine and ``eps`` (1e-12 in the RAE decoder
    and MAE, 1e-6 in DINOv2 and SigLIP — RAE README "Things that are easy to get wrong" 7).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        eps: float,
        gelu_approximate: str = "none",
        qkv_bias: bool = True,
        layerscale: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, layerscale) if layerscale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, approximate=gelu_approximate)
        self.ls2 = LayerScale(dim, layerscale) if layerscale is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x))[0])
        return x + self.ls2(self.mlp(self.norm2(x)))
