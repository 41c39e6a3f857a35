"""Training callbacks: EMA weights, sample grids (GAN warm-up, autoguidance and evaluation land with their issues)."""
from callbacks.ema import EMA
from callbacks.samples import LogSamples

__all__ = ["EMA", "LogSamples"]
