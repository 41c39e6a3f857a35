"""DiT^DH: a LightningDiT backbone M plus a wide, shallow DDT head H (RAE Sec. 5, App. F).

    z_t = M(x_t | t, y),   v_t = H(x_t | z_t, t)            (RAE Sec. 5)

The backbone is the RAE LightningDiT (``lightningdit_preset`` options: Gaussian Fourier time embedding,
RMSNorm with weight, SwiGLU, 2-D RoPE plus the fixed sin-cos APE, patch size 1) without its final layer.
Its blocks are conditioned on c = SiLU(t_emb + y_emb) — the official DiT^DH applies this SiLU before the
blocks' own adaLN SiLU (reference/rae_stage2 README "Double SiLU"), which we keep so checkpoints load
as trained. The head (``networks/ddt_head.py``) sees x_t again, without APE, modulated per token by z_t.

Presets (RAE Sec. 5, Tables 13 and 16): DiT^DH-S/B/L/XL backbones (DiT sizes) with the default 2 × 2048 head.
DiT^DH-XL on DINOv2-B at 256 px has 838.68 M parameters counting the frozen sin-cos table and W, as the
official code does (the paper's "839M"). The width rule of RAE Sec. 4.1 applies to the head: its width
must be at least the token dimension C·p² (a config error otherwise; the backbone may be narrower, e.g.
DiT^DH-S = 384 wide on 768-d tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks import LabelEmbedder, PatchEmbed, RoPE2D, sincos_2d_pos_embed
from speedrun_diffusion.lightning_modules.networks.ddt_head import DDT_HEAD_WIDTHS, DDTHead, DDTHeadConfig
from speedrun_diffusion.lightning_modules.networks.dit import (
    DIT_SIZES,
    DiTBlock,
    DiTConfig,
    check_token_width,
    lightningdit_preset,
    make_time_embedder,
)


@dataclass(frozen=True)
class DiTDHConfig:
    """Backbone (a DiTConfig with LightningDiT options; its final layer is not built) + DDT head size.

    ``check_width`` enforces RAE Sec. 4.1 on the head (head width ≥ in_channels·patch_size²).
    """

    backbone: DiTConfig = field(default_factory=lambda: lightningdit_preset("LightningDiT-XL/1"))
    head: DDTHeadConfig = field(default_factory=DDTHeadConfig)
    check_width: bool = True

    def __post_init__(self) -> None:
        if self.check_width:
            check_token_width(self.head.hidden_size, self.token_dim, "DDT head hidden_size")

    @property
    def num_tokens(self) -> int:
        return self.backbone.num_tokens

    @property
    def token_dim(self) -> int:
        return self.backbone.in_channels * self.backbone.patch_size**2


def ditdh_preset(
    name: str = "DiTDH-XL",
    head: str = "G",
    head_depth: int = 2,
    check_width: bool = True,
    **backbone_overrides,
) -> DiTDHConfig:
    """DiT^DH config by name: "DiTDH-S|B|L|XL" (backbone, DiT Table 1 sizes, patch 1, DINOv2-B 768 × 16 × 16
    latent) with a ``head_depth`` × Table 16 width head ("B" 768, "H" 1536, "G" 2048 default, "T" 2688).

    ``backbone_overrides`` replace backbone fields (e.g. ``input_size=32`` for 512 px, ``in_channels=384``
    for DINOv2-S); use ``DiTDHConfig(backbone, DDTHeadConfig(w, d, h))`` for a head outside Table 16.
    """
    family, _, size = name.replace("DiT^DH", "DiTDH").partition("-")
    if family != "DiTDH" or size not in DIT_SIZES:
        raise ValueError(f"unknown preset {name!r}; expected 'DiTDH-' + one of {sorted(DIT_SIZES)}")
    if head not in DDT_HEAD_WIDTHS:
        raise ValueError(f"unknown DDT head width {head!r}; expected one of {sorted(DDT_HEAD_WIDTHS)}")
    backbone = lightningdit_preset(f"LightningDiT-{size}/1", check_width=False, **backbone_overrides)
    return DiTDHConfig(backbone=backbone, head=DDTHeadConfig.from_name(head, head_depth), check_width=check_width)


class DiTDH(nn.Module):
    """DiT^DH denoiser ``forward(x, t, y) -> velocity`` (DESIGN contract: t ∈ [0, 1], shape (B,), t = 1 noise).

    Submodules carry the official names where they are the backbone's (``s_embedder``, ``t_embedder``,
    ``y_embedder``, ``pos_embed``, ``enc_feat_rope``, ``blocks``); the head lives in ``head`` (official
    ``x_embedder``, ``s_projector``, ``dec_feat_rope``, ``final_layer`` and the trailing ``blocks``;
    ``checkpoints/rae_stage2.py`` renames them on import).
    """

    def __init__(self, cfg: DiTDHConfig) -> None:
        super().__init__()
        b = cfg.backbone
        if b.input_size % b.patch_size:
            raise ValueError(f"input_size {b.input_size} is not divisible by patch_size {b.patch_size}")
        if b.hidden_size % b.num_heads:
            raise ValueError(f"backbone hidden_size {b.hidden_size} is not divisible by num_heads {b.num_heads}")
        if b.cls_token_dim or b.z_dims or b.modulation != "adaln" or b.learn_sigma:
            raise ValueError("DiT^DH backbone supports neither cls tokens, REPA projectors, global modulation "
                             "nor learn_sigma (set cls_token_dim=0, z_dims=(), modulation='adaln', learn_sigma=False)")
        self.cfg = cfg
        dim = b.hidden_size
        self.s_embedder = PatchEmbed(b.in_channels, dim, b.patch_size)
        self.t_embedder = make_time_embedder(b.time_embed, dim)
        self.y_embedder = LabelEmbedder(b.num_classes, dim, b.class_dropout_prob)
        if b.pos_embed:
            # fixed, not trained; persistent so official state dicts map key-for-key
            self.register_buffer("pos_embed", sincos_2d_pos_embed(dim, b.grid_size).unsqueeze(0))
        self.enc_feat_rope = RoPE2D(dim // b.num_heads, b.grid_size) if b.rope else None
        self.blocks = nn.ModuleList(DiTBlock(b, i) for i in range(b.depth))
        self.head = DDTHead(cfg.head, b, cond_dim=dim)
        self.initialize_weights()

    @property
    def num_classes(self) -> int:
        return self.cfg.backbone.num_classes

    def initialize_weights(self) -> None:
        """Official DiT^DH init (``initialize_weights(xavier_uniform_init=False)``): Linear layers keep
        PyTorch's default; patch embeddings Xavier on the (D, C·p²) view with zero bias; label table and time
        MLP N(0, 0.02); every adaLN regressor, the final modulation and the output Linear zero."""
        for embedder in (self.s_embedder, self.head.x_embedder):
            w = embedder.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        final = self.head.final_layer
        for linear in [blk.adaLN_modulation[1] for blk in [*self.blocks, *self.head.blocks]] + [
            final.adaLN_modulation[1], final.linear
        ]:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def encode(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        force_drop: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Backbone M: (z_t (B, N, D_enc), t_emb (B, D_enc)); ``force_drop`` / ``generator`` pin label dropout."""
        b = self.cfg.backbone
        if x.shape[1:] != (b.in_channels, b.input_size, b.input_size):
            raise ValueError(f"expected input (B, {b.in_channels}, {b.input_size}, {b.input_size}), got {tuple(x.shape)}")
        if force_drop is None and generator is not None and self.training and self.y_embedder.dropout_prob > 0:
            # one uniform per sample, as the official LabelEmbedder, but from the given generator
            force_drop = torch.rand(y.shape, device=y.device, generator=generator) < self.y_embedder.dropout_prob
        t_emb = self.t_embedder(t)
        c = F.silu(t_emb + self.y_embedder(y, force_drop=force_drop))  # official DiT^DH: SiLU before adaLN's SiLU
        z = self.s_embedder(x)
        if b.pos_embed:
            z = z + self.pos_embed.to(z.dtype)
        for block in self.blocks:
            z, _ = block(z, c, rope=self.enc_feat_rope)
        return z, t_emb

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        force_drop: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Velocity v̂(x_t, t, y) = H(x_t | M(x_t | t, y), t), shape of x."""
        z, t_emb = self.encode(x, t, y, force_drop, generator)
        return self.head(x, z, t_emb)

    def velocity(self, x: Tensor, t: Tensor, y: Tensor, **kwargs) -> Tensor:
        """Sampler view (same as ``forward``; mirrors ``DiT.velocity``)."""
        return self(x, t, y, **kwargs)


__all__ = ["DiTDH", "DiTDHConfig", "ditdh_preset"]
