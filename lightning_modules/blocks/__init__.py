"""nn building blocks shared by every network (DESIGN.md "Layout": lightning_modules/blocks)."""
from __future__ import annotations

from .attention import Attention
from .conv_autoencoder import ConvResnetBlock, Downsample, SpatialSelfAttention, Upsample
from .embeddings import (
    FourierTimestepEmbedder,
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
from .resblock import ResBlock, group_norm
from .rope import RoPE2D, grid_position_ids, rope_grid_tables

__all__ = [
    "AdaLNModulation",
    "Attention",
    "ConvResnetBlock",
    "Downsample",
    "BlockModulationBias",
    "FourierTimestepEmbedder",
    "GaussianFourierEmbedding",
    "GlobalModulation",
    "LabelEmbedder",
    "Mlp",
    "PatchEmbed",
    "RMSNorm",
    "ResBlock",
    "RoPE2D",
    "SpatialSelfAttention",
    "SwiGLU",
    "TimestepEmbedder",
    "Upsample",
    "grid_position_ids",
    "group_norm",
    "modulate",
    "patchify",
    "rope_grid_tables",
    "sincos_2d_pos_embed",
    "sinusoidal_embedding",
    "swiglu_hidden_dim",
    "unpatchify",
]
