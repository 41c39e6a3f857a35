"""Loss terms shared by the recipes (DESIGN: losses/)."""
from lightning_modules.losses.flow_matching import flow_matching_loss, velocity_mse

__all__ = ["flow_matching_loss", "velocity_mse"]
