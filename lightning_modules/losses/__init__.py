"""Loss terms shared by the recipes (DESIGN: losses/)."""
from speedrun_diffusion.lightning_modules.losses.contrastive_flow import contrastive_flow_loss, contrastive_targets
from speedrun_diffusion.lightning_modules.losses.diffaug import DiffAug
from speedrun_diffusion.lightning_modules.losses.flow_matching import flow_matching_loss, velocity_mse
from speedrun_diffusion.lightning_modules.losses.gan import (
    AdaptiveWeight,
    GANPhase,
    LeCamRegularizer,
    adaptive_weight,
    disc_accuracy,
    hinge_d_loss,
    lecam_regularization,
    quantize_fake,
    select_gan_losses,
    vanilla_d_loss,
    vanilla_g_loss,
)
from speedrun_diffusion.lightning_modules.losses.kl import gaussian_kl, kl_loss
from speedrun_diffusion.lightning_modules.losses.lpips import LPIPS, ConvFeatures
from speedrun_diffusion.lightning_modules.losses.rae_transport import TransportLoss, rae_transport_loss
from speedrun_diffusion.lightning_modules.losses.reg import cls_velocity_loss
from speedrun_diffusion.lightning_modules.losses.repa import negative_cosine, repa_loss
from speedrun_diffusion.lightning_modules.losses.repa_pp import REPAPlusPlus, capture_block_output
from speedrun_diffusion.lightning_modules.losses.speeddiff_loss import (
    SpeedDiffWeights,
    speeddiff_discriminator_losses,
    speeddiff_generator_losses,
)
from speedrun_diffusion.lightning_modules.losses.srdit_loss import SRDiTLoss
from speedrun_diffusion.lightning_modules.losses.tpr import tpr_loss, tweedie_latent

__all__ = [
    "SpeedDiffWeights",
    "speeddiff_discriminator_losses",
    "speeddiff_generator_losses",
    "AdaptiveWeight",
    "GANPhase",
    "ConvFeatures",
    "DiffAug",
    "LPIPS",
    "LeCamRegularizer",
    "adaptive_weight",
    "disc_accuracy",
    "hinge_d_loss",
    "lecam_regularization",
    "quantize_fake",
    "select_gan_losses",
    "vanilla_d_loss",
    "vanilla_g_loss",
    "REPAPlusPlus",
    "SRDiTLoss",
    "TransportLoss",
    "rae_transport_loss",
    "cls_velocity_loss",
    "contrastive_flow_loss",
    "contrastive_targets",
    "capture_block_output",
    "flow_matching_loss",
    "gaussian_kl",
    "kl_loss",
    "negative_cosine",
    "repa_loss",
    "tpr_loss",
    "tweedie_latent",
    "velocity_mse",
]
