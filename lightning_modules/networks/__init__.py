"""Whole networks composed from `lightning_modules.blocks`."""
from lightning_modules.networks.dit import DiT, DiTConfig, dit_preset

__all__ = ["DiT", "DiTConfig", "dit_preset"]
