"""Training callbacks: EMA weights, sample grids and distributed evaluation (GAN warm-up and
autoguidance land with the RAE / SpeedDiff issues)."""
from callbacks.checkpointing import AtomicCheckpointIO, AtomicModelCheckpoint
from callbacks.ema import EMA
from callbacks.evaluation import Evaluation
from callbacks.latent_writer import LatentWriter
from callbacks.samples import LogSamples

__all__ = ["AtomicCheckpointIO", "AtomicModelCheckpoint", "EMA", "Evaluation", "LatentWriter", "LogSamples"]
