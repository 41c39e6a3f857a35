"""Training callbacks: EMA weights, GAN warm-up, autoguidance, sample grids, distributed evaluation, latent
caching and atomic checkpoints."""
from callbacks.autoguidance import AutoGuidance
from callbacks.checkpointing import AtomicCheckpointIO, AtomicModelCheckpoint
from callbacks.ema import EMA
from callbacks.evaluation import Evaluation
from callbacks.gan_warmup import GANWarmup
from callbacks.latent_writer import LatentWriter
from callbacks.samples import LogSamples

__all__ = [
    "AtomicCheckpointIO", "AtomicModelCheckpoint", "AutoGuidance", "EMA", "Evaluation", "GANWarmup", "LatentWriter",
    "LogSamples",
]
