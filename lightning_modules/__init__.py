"""Everything that is a model: shared blocks, networks, diffusion math, losses and the recipes.

Public LightningModules (DESIGN "Public surface"); recipes land here as their issues are built.
"""
from speedrun_diffusion.lightning_modules.latent_encoder import LatentEncoder
from speedrun_diffusion.lightning_modules.rae_stage1 import RAEStage1
from speedrun_diffusion.lightning_modules.rae_stage2 import RAEStage2
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe
from speedrun_diffusion.lightning_modules.sid2 import SiD2
from speedrun_diffusion.lightning_modules.sit import SiT
from speedrun_diffusion.lightning_modules.speeddiff import SpeedDiff
from speedrun_diffusion.lightning_modules.srdit import SRDiT

__all__ = ["DiffusionRecipe", "LatentEncoder", "RAEStage1", "RAEStage2", "SRDiT", "SiD2", "SiT", "SpeedDiff"]
