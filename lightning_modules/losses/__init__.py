"""Loss terms shared by the recipes (DESIGN: losses/)."""
from lightning_modules.losses.flow_matching import flow_matching_loss, velocity_mse
from lightning_modules.losses.contrastive_flow import contrastive_flow_loss, contrastive_targets
from lightning_modules.losses.reg import cls_velocity_loss
from lightning_modules.losses.repa import negative_cosine, repa_loss
from lightning_modules.losses.srdit_loss import SRDiTLoss

__all__ = [
    "SRDiTLoss",
    "cls_velocity_loss",
    "contrastive_flow_loss",
    "contrastive_targets",
    "flow_matching_loss",
    "negative_cosine",
    "repa_loss",
    "velocity_mse",
]
