"""Training callbacks: EMA weights, sample grids and distributed evaluation (GAN warm-up and
autoguidance land with the RAE / SpeedDiff issues)."""
from callbacks.ema import EMA
from callbacks.evaluation import Evaluation
from callbacks.samples import LogSamples

__all__ = ["EMA", "Evaluation", "LogSamples"]
