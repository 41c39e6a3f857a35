"""Whole networks composed from `lightning_modules.blocks`."""
from speedrun_diffusion.lightning_modules.networks.ddt_head import DDTHead, DDTHeadConfig
from speedrun_diffusion.lightning_modules.networks.dit import (
    DiT,
    DiTConfig,
    DiTOutput,
    dit_preset,
    lightningdit_preset,
    refined_dit_preset,
)
from speedrun_diffusion.lightning_modules.networks.ditdh import DiTDH, DiTDHConfig, ditdh_preset
from speedrun_diffusion.lightning_modules.networks.invae import INVAE, INVAEConfig
from speedrun_diffusion.lightning_modules.networks.rae import RAE, noise_augment
from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder, RAEDecoderConfig, rae_decoder_preset
from speedrun_diffusion.lightning_modules.networks.rae_encoder import (
    RepresentationEncoder,
    RepresentationEncoderConfig,
    representation_encoder_preset,
)
from speedrun_diffusion.lightning_modules.networks.sprint import SprintConfig, SprintDiT, build_dit
from speedrun_diffusion.lightning_modules.networks.uvit import UViT, UViTConfig, uvit_preset
from speedrun_diffusion.lightning_modules.networks.vit_vae import ViTVAE, ViTVAEConfig, vit_vae_preset

__all__ = ["DiT", "DiTConfig", "DiTOutput", "INVAE", "INVAEConfig", "SprintConfig", "SprintDiT", "UViT",
           "UViTConfig", "build_dit", "dit_preset", "uvit_preset"]
__all__ += ["ViTVAE", "ViTVAEConfig", "refined_dit_preset", "vit_vae_preset"]
__all__ += ["DDTHead", "DDTHeadConfig", "DiTDH", "DiTDHConfig", "ditdh_preset", "lightningdit_preset"]
__all__ += ["RAE", "RAEDecoder", "RAEDecoderConfig", "RepresentationEncoder", "RepresentationEncoderConfig",
            "noise_augment", "rae_decoder_preset", "representation_encoder_preset"]
