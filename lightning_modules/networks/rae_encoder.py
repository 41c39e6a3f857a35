"""RAE's frozen representation encoders E: DINOv2-B with registers, SigLIP2-B, MAE-B (RAE Sec. 3, App. E.1).

One small ViT covers the three families; they differ only in data (``RepresentationEncoderConfig``):

| family    | prefix tokens       | positions                                   | GELU  | LN eps | image mean / std |
|-----------|---------------------|---------------------------------------------|-------|--------|------------------|
| dinov2    | [CLS] + 4 registers | learned, CLS row; bicubic **antialiased**   | exact | 1e-6   | ImageNet         |
| siglip2   | none                | learned, no CLS row; bicubic                | tanh  | 1e-6   | 0.5 / 0.5        |
| mae       | [CLS]               | fixed 2-D sin-cos, CLS row; bicubic         | exact | 1e-12  | ImageNet         |

Registers get no position. Position tables are resized (float32, align_corners=False) only when the token
grid differs from the pretrained one, as the HF models do with ``interpolate_pos_encoding``. The output is
the patch tokens (prefix tokens dropped) after the final LayerNorm **without affine**, i.e. every token has
zero mean and unit variance over channels (RAE App. E.1 "Encoder normalization": the wrappers
``Dinov2withNorm`` / ``SigLIP2wNorm`` / ``MAEwNorm`` discard the released γ, β).

Our own ViT (not a timm model) because the official encoders are HF ``transformers`` models whose
numerics timm does not reproduce: timm folds DINOv2's [CLS] position into the token and resizes positions
its own way (HF: antialias only for DINOv2), uses LayerNorm eps 1e-6 for MAE (HF 1e-12) and exact GELU for
SigLIP (HF tanh). Block parameter names follow timm, so timm weights load directly; timm and HF weights load
through ``lightning_modules.checkpoints.rae_stage1`` (``load_timm_encoder``, ``load_hf_encoder`` for a local HF
model folder, kinds ``rae.encoder.*``). Nothing is downloaded at construction.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks.embeddings import PatchEmbed, sincos_2d_pos_embed
from speedrun_diffusion.lightning_modules.networks.rae_vit import ViTLayer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_FAMILIES = ("dinov2", "siglip2", "mae")


@dataclass(frozen=True)
class RepresentationEncoderConfig:
    """A frozen ViT encoder; defaults = DINOv2-B/14 with 4 registers (facebook/dinov2-with-registers-base).

    ``pos_grid`` is the side of the pretrained position table (518/14 = 37 for DINOv2).
    """

    family: str = "dinov2"
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 14
    pos_grid: int = 37
    in_channels: int = 3
    num_register_tokens: int = 4
    layer_norm_eps: float = 1e-6
    final_norm_eps: float = 1e-6
    gelu_approximate: str = "none"
    qkv_bias: bool = True
    layerscale: float | None = 1.0
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.family not in ENCODER_FAMILIES:
            raise ValueError(f"RepresentationEncoderConfig.family={self.family!r}; known: {ENCODER_FAMILIES}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.num_register_tokens and self.family != "dinov2":
            raise ValueError(f"num_register_tokens={self.num_register_tokens}: only the dinov2 family has registers")
        if len(self.image_mean) != self.in_channels or len(self.image_std) != self.in_channels:
            raise ValueError("image_mean / image_std need one value per input channel")

    @property
    def has_cls(self) -> bool:
        return self.family != "siglip2"

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens dropped from the output: [CLS] and registers (official DINOv2 wrapper: ``[:, 5:]``)."""
        return int(self.has_cls) + self.num_register_tokens

    @property
    def pos_antialias(self) -> bool:
        """HF DINOv2 resizes its position grid with antialias; SigLIP and ViT-MAE do not."""
        return self.family == "dinov2"


# the three B/16-class encoders of RAE Tab. 1a (HF hub configs)
ENCODER_PRESETS: dict[str, RepresentationEncoderConfig] = {
    "dinov2": RepresentationEncoderConfig(),
    "siglip2": RepresentationEncoderConfig(
        family="siglip2", patch_size=16, pos_grid=16, num_register_tokens=0, gelu_approximate="tanh",
        layerscale=None, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
    ),
    "mae": RepresentationEncoderConfig(
        family="mae", patch_size=16, pos_grid=14, num_register_tokens=0, layer_norm_eps=1e-12,
        final_norm_eps=1e-12, layerscale=None,
    ),
}


def representation_encoder_preset(family: str, **overrides) -> RepresentationEncoderConfig:
    """DINOv2-B (registers) / SigLIP2-B / MAE-B as used by RAE (Sec. 3), with optional field overrides."""
    if family not in ENCODER_PRESETS:
        raise ValueError(f"unknown RAE encoder family {family!r}; known: {sorted(ENCODER_PRESETS)}")
    return replace(ENCODER_PRESETS[family], **overrides)


class RepresentationEncoder(nn.Module):
    """Frozen pretrained ViT E of RAE Sec. 3: normalised image (B, 3, H, W) → patch tokens (B, HW/p_e², C).

    The input must already be resized and normalised with ``image_mean`` / ``image_std`` (``RAE`` does it).
    Parameters start random (no download); weights load through ``checkpoints.rae_stage1``.
    """

    def __init__(self, cfg: RepresentationEncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or RepresentationEncoderConfig()
        c = cfg.hidden_size
        self.patch_embed = PatchEmbed(cfg.in_channels, c, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c)) if cfg.has_cls else None
        self.reg_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, c)) if cfg.num_register_tokens else None
        n_pos = int(cfg.has_cls) + cfg.pos_grid**2
        if cfg.family == "mae":  # fixed sin-cos table, stored in the checkpoint like HF's frozen parameter
            self.pos_embed = nn.Parameter(sincos_2d_pos_embed(c, cfg.pos_grid, 1).unsqueeze(0), requires_grad=False)
        else:
            self.pos_embed = nn.Parameter(torch.randn(1, n_pos, c) * 0.02)
        layerscale = cfg.layerscale
        self.blocks = nn.ModuleList(
            ViTLayer(c, cfg.num_heads, cfg.mlp_dim, cfg.layer_norm_eps, cfg.gelu_approximate, cfg.qkv_bias, layerscale)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(c, eps=cfg.final_norm_eps, elementwise_affine=False)  # affine cancelled (App. E.1)
        self.register_buffer("image_mean", torch.tensor(cfg.image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(cfg.image_std).view(1, -1, 1, 1), persistent=False)

    def patch_positions(self, height: int, width: int) -> Tensor:
        """Position rows of a height×width token grid: the pretrained table, bicubically resized if needed."""
        table = self.pos_embed[:, int(self.cfg.has_cls):]
        g = self.cfg.pos_grid
        if (height, width) == (g, g):
            return table
        grid = table.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=self.cfg.pos_antialias
        ).to(table.dtype)
        return grid.permute(0, 2, 3, 1).reshape(1, height * width, -1)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W), H and W multiples of p_e → tokens (B, N, C), raster order."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"RepresentationEncoder expects (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}")
        b, _, height, width = x.shape
        p = self.cfg.patch_size
        tokens = self.patch_embed(x) + self.patch_positions(height // p, width // p)
        prefix = []
        if self.cls_token is not None:
            prefix.append((self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1))
        if self.reg_tokens is not None:
            prefix.append(self.reg_tokens.expand(b, -1, -1))
        h = torch.cat([*prefix, tokens], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)[:, self.cfg.num_prefix_tokens:]

    def grid_size(self, image_size: int) -> int:
        """Token-grid side for a square input of ``image_size`` pixels (e.g. 224 / 14 = 16)."""
        if image_size % self.cfg.patch_size:
            raise ValueError(f"encoder input size {image_size} is not a multiple of patch size {self.cfg.patch_size}")
        return image_size // self.cfg.patch_size

