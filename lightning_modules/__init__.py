"""Everything that is a model: shared blocks, networks, diffusion math, losses and the recipes.

Public LightningModules (DESIGN "Public surface"); recipes land here as their issues are built.
"""
from lightning_modules.recipe import DiffusionRecipe
from lightning_modules.sit import SiT

__all__ = ["DiffusionRecipe", "SiT"]
