"""Whole networks composed from `lightning_modules.blocks`."""
from lightning_modules.networks.dit import DiT, DiTConfig, DiTOutput, dit_preset
from lightning_modules.networks.invae import INVAE, INVAEConfig
from lightning_modules.networks.sprint import SprintConfig, SprintDiT, build_dit
from lightning_modules.networks.uvit import UViT, UViTConfig, uvit_preset

__all__ = ["DiT", "DiTConfig", "DiTOutput", "INVAE", "INVAEConfig", "SprintConfig", "SprintDiT", "UViT",
           "UViTConfig", "build_dit", "dit_preset", "uvit_preset"]
