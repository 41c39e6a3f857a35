"""nn building blocks shared by every network (DESIGN.md "Layout": lightning_modules/blocks)."""
from __future__ import annotations

from .attention import Attention
from .embeddings import (
    GaussianFourierEmbedding,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    patchify,
    sincos_2d_pos_embed,
    sinusoidal_embedding,
    unpatchify,
)
from .mlp import Mlp, SwiGLU, swiglu_hidden_dim
from .modulation import AdaLNModulation, BlockModulationBias, GlobalModulation, modulate
from .norms import RMSNorm
from .rope import RoPE2D, grid_position_ids, rope_grid_tables

__all__ = [
    "AdaLNModulation",
    "Attention",
    "BlockModulationBias",
    "GaussianFourierEmbedding",
    "GlobalModulation",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "RMSNorm",
    "RoPE2D",
    "SwiGLU",
    "TimestepEmbedder",
    "grid_position_ids",
    "modulate",
    "patchify",
    "rope_grid_tables",
    "sincos_2d_pos_embed",
    "sinusoidal_embedding",
    "swiglu_hidden_dim",
    "unpatchify",
]
