"""RAE's ViT pixel decoder (official ``GeneralDecoder``: the ViT-MAE decoder used standalone; RAE Sec. 3, App. E.2).

    tokens (B, N, C) ─embed─▶ (B, N, Hd) ─[bilinear resize to the trained grid if N ≠ G²]─▶
    [CLS; tokens] + fixed 2-D sin-cos positions ─L pre-norm ViT layers─▶ LayerNorm ─pred─▶
    (B, 1+G², p_d²·3) ─drop [CLS]─▶ logits (B, G², p_d²·3) ─unpatchify─▶ image (B, 3, p_d·G, p_d·G)

The decoder's patch size p_d is independent of the encoder's p_e: DINOv2-B (p_e = 14 at 224 px) gives
16×16 tokens that decode with p_d = 16 to 256×256 (RAE App. E.1 "Practical Notes"); p_d = 2·p_e doubles
the resolution. The output is in the *encoder-normalised* pixel space; ``RAE.decode`` maps it back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks.embeddings import sincos_2d_pos_embed, unpatchify
from speedrun_diffusion.lightning_modules.networks.rae_vit import ViTLayer

# official configs/decoder/ViT{B,L,XL}/config.json: (hidden, layers, heads, MLP); XL uses MLP 4096, not 4·1152
RAE_DECODER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "XL": (1152, 28, 16, 4096),
}


@dataclass(frozen=True)
class RAEDecoderConfig:
    """``GeneralDecoder`` as RAE builds it; defaults = ViT-XL for DINOv2-B at 256 px (RAE Tab. 1b).

    ``latent_dim`` is the encoder width C (official ``hidden_size``), ``num_patches`` the trained token
    count G² (official ``image_size / patch_size`` squared), ``patch_size`` is p_d.
    """

    latent_dim: int = 768
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_dim: int = 4096
    patch_size: int = 16
    num_patches: int = 256
    out_channels: int = 3
    layer_norm_eps: float = 1e-12
    gelu_approximate: str = "none"
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        if math.isqrt(self.num_patches) ** 2 != self.num_patches:
            raise ValueError(f"RAEDecoderConfig.num_patches={self.num_patches} is not a square token grid")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"RAEDecoderConfig.hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}"
            )
        if self.hidden_size % 4:
            raise ValueError(f"RAEDecoderConfig.hidden_size={self.hidden_size} must be divisible by 4 (2-D sin-cos)")

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def image_size(self) -> int:
        return self.patch_size * self.grid_size


def rae_decoder_preset(name: str, **overrides) -> RAEDecoderConfig:
    """The official ViT-B / ViT-L / ViT-XL decoder (RAE Tab. 1b) with optional field overrides."""
    key = name.upper().removeprefix("VIT-").removeprefix("VIT")
    if key not in RAE_DECODER_SIZES:
        raise ValueError(f"unknown RAE decoder size {name!r}; known: {sorted(RAE_DECODER_SIZES)}")
    hidden, depth, heads, mlp = RAE_DECODER_SIZES[key]
    return replace(RAEDecoderConfig(hidden_size=hidden, depth=depth, num_heads=heads, mlp_dim=mlp), **overrides)


class RAEDecoder(nn.Module):
    """ViT decoder D of RAE Sec. 3: encoder tokens → per-patch pixels; a learned [CLS] is prepended and dropped.

    Following MAE (He et al. 2021) and RAE App. E.2, one learnable [CLS] (zero-initialised, *not* an encoder
    token) is prepended before the fixed sin-cos positions and its output row is discarded. The position
    table is a frozen ``nn.Parameter`` (in the state dict and the EMA, not trained). PyTorch default init.
    """

    def __init__(self, cfg: RAEDecoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RAEDecoderConfig()
        self.embed = nn.Linear(cfg.latent_dim, cfg.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        pos = sincos_2d_pos_embed(cfg.hidden_size, cfg.grid_size, num_extra_tokens=1)
        self.pos_embed = nn.Parameter(pos.unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList(
            ViTLayer(cfg.hidden_size, cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps, cfg.gelu_approximate,
                     cfg.qkv_bias)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.pred = nn.Linear(cfg.hidden_size, cfg.patch_size**2 * cfg.out_channels)

    @property
    def last_layer(self) -> Tensor:
        """The weight the adaptive GAN weight differentiates (RAE README "Generator loss": ``decoder_pred``)."""
        return self.pred.weight

    def resize_tokens(self, x: Tensor) -> Tensor:
        """Bilinearly resize embedded tokens on another square grid to the trained G×G grid
        (official ``interpolate_latent``; align_corners=False, no antialias)."""
        b, n, d = x.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"RAEDecoder: {n} tokens do not form a square grid")
        if n == self.cfg.num_patches:
            return x
        grid = x.transpose(1, 2).reshape(b, d, side, side)
        grid = F.interpolate(grid, size=(self.cfg.grid_size,) * 2, mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward(self, tokens: Tensor, return_hidden_states: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """tokens (B, N, C) in raster order → logits (B, G², p_d²·3), layout (p, q, c) per token.

        With ``return_hidden_states`` also the (B, 1+G², Hd) states: after embedding + positions, then after
        every layer (before the final norm), like HF ``output_hidden_states``.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.cfg.latent_dim:
            raise ValueError(
                f"RAEDecoder expects tokens (B, N, latent_dim={self.cfg.latent_dim}), got {tuple(tokens.shape)}"
            )
        x = self.resize_tokens(self.embed(tokens))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        hidden = [x]
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        logits = self.pred(self.norm(x))[:, 1:]
        return (logits, hidden) if return_hidden_states else logits

    def unpatchify(self, logits: Tensor) -> Tensor:
        """(B, G², p_d²·3) → (B, 3, p_d·G, p_d·G): pixel (i·p_d + p, j·p_d + q) of token i·G + j."""
        return unpatchify(logits, self.cfg.patch_size, self.cfg.out_channels)

    def decode(self, tokens: Tensor) -> Tensor:
        """tokens (B, N, C) → image (B, 3, p_d·G, p_d·G) in encoder-normalised pixel space."""
        return self.unpatchify(self(tokens))  # through __call__: a compiled decoder (nn.Module.compile) is used
