"""The wide, shallow DDT head of DiT^DH (RAE Sec. 5, Fig. 5; App. H.3, Tables 15-16).

v_t = H(x_t | z_t, t): the head re-embeds the noisy input x_t with its own patch embedding (no absolute
position embedding, RAE App. F) and runs a few wide transformer blocks whose adaLN modulation is
**per token**, taken from the backbone output z_t (RAE Sec. 5). The condition is
s = Proj(SiLU(z_t + t_emb)) — only the time embedding is added back, the label reaches the head through
z_t — with Proj a Linear when the backbone and head widths differ, else the identity (RAE App. F).
The final adaLN layer is modulated by s as well and predicts p²·C values per token.

Blocks are the shared LightningDiT blocks of ``networks/dit.py`` (RMSNorm with weight, SwiGLU, 2-D RoPE on
the head's own head_dim); only width, depth and heads differ from the backbone. The default is the paper's
2 blocks × 2048 ("G", 16 heads); Table 16 also tries 768 (B), 1536 (H) and 2688 (T).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks import PatchEmbed, RoPE2D, unpatchify
from speedrun_diffusion.lightning_modules.networks.dit import DiTBlock, DiTConfig, FinalLayer

# RAE Table 16 head widths with the Table 13 head counts of the same width: name -> (width, heads).
DDT_HEAD_WIDTHS: dict[str, tuple[int, int]] = {
    "B": (768, 12),
    "H": (1536, 16),
    "G": (2048, 16),
    "T": (2688, 21),
}


@dataclass(frozen=True)
class DDTHeadConfig:
    """Size of the DDT head; the block options (norm, MLP, QK-norm, RoPE) follow the backbone config."""

    hidden_size: int = 2048
    depth: int = 2
    num_heads: int = 16

    @classmethod
    def from_name(cls, name: str = "G", depth: int = 2) -> "DDTHeadConfig":
        """A Table 16 width by name ("B", "H", "G", "T") with ``depth`` blocks ("d-w" = depth-width)."""
        if name not in DDT_HEAD_WIDTHS:
            raise ValueError(f"unknown DDT head width {name!r}; expected one of {sorted(DDT_HEAD_WIDTHS)}")
        width, heads = DDT_HEAD_WIDTHS[name]
        return cls(hidden_size=width, depth=depth, num_heads=heads)


class DDTHead(nn.Module):
    """H(x_t | z_t, t) → velocity (B, C, H, W) (RAE Sec. 5 "Wide DDT head").

    ``block_cfg`` is the backbone's DiTConfig: it supplies the input geometry (in_channels, input_size,
    patch_size) and the block options; ``cond_dim`` is the backbone width (input of ``s_projector``).
    Submodule names follow the official DiT^DH (``x_embedder``, ``s_projector``, ``final_layer``).
    """

    def __init__(self, cfg: DDTHeadConfig, block_cfg: DiTConfig, cond_dim: int) -> None:
        super().__init__()
        if cfg.depth < 1:
            raise ValueError(f"DDT head depth must be >= 1, got {cfg.depth}")
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"DDT head hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        dim = cfg.hidden_size
        # the head's blocks: backbone options at head width; no value residual / global modulation
        self.block_cfg = replace(block_cfg, hidden_size=dim, num_heads=cfg.num_heads, depth=cfg.depth,
                                 value_residual=False, modulation="adaln")
        self.in_channels = block_cfg.in_channels
        self.patch_size = block_cfg.patch_size
        self.x_embedder = PatchEmbed(block_cfg.in_channels, dim, block_cfg.patch_size)
        self.s_projector: nn.Module = nn.Linear(cond_dim, dim) if cond_dim != dim else nn.Identity()
        self.feat_rope = RoPE2D(dim // cfg.num_heads, block_cfg.grid_size) if block_cfg.rope else None
        self.blocks = nn.ModuleList(DiTBlock(self.block_cfg, i) for i in range(cfg.depth))
        self.final_layer = FinalLayer(dim, self.patch_size**2 * self.in_channels, block_cfg.norm,
                                      norm_weight=block_cfg.norm_weight)

    def condition(self, z: Tensor, t_emb: Tensor) -> Tensor:
        """Per-token condition s = Proj(SiLU(z_t + t_emb)) (B, N, D_head) (official DiT^DH forward)."""
        return self.s_projector(F.silu(t_emb.unsqueeze(1) + z))

    def forward(self, x: Tensor, z: Tensor, t_emb: Tensor) -> Tensor:
        """x_t (B, C, H, W), backbone tokens z_t (B, N, D_enc), time embedding (B, D_enc) → (B, C, H, W)."""
        s = self.condition(z, t_emb)
        h = self.x_embedder(x)
        if h.shape[1] != s.shape[1]:
            raise ValueError(f"head sees {h.shape[1]} tokens but the backbone gave {s.shape[1]}")
        for block in self.blocks:
            h, _ = block(h, s, rope=self.feat_rope)
        out = self.final_layer(h, s)
        return unpatchify(out, self.patch_size, self.in_channels, x.shape[-2], x.shape[-1])


__all__ = ["DDT_HEAD_WIDTHS", "DDTHead", "DDTHeadConfig"]
