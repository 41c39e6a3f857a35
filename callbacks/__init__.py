"""Training callbacks: EMA weights, GAN warm-up, autoguidance, sample grids, distributed evaluation, latent
caching and atomic checkpoints."""
from speedrun_diffusion.callbacks.autoguidance import AutoGuidance
from speedrun_diffusion.callbacks.checkpointing import AtomicCheckpointIO, AtomicModelCheckpoint
from speedrun_diffusion.callbacks.ema import EMA
from speedrun_diffusion.callbacks.evaluation import Evaluation
from speedrun_diffusion.callbacks.gan_warmup import GANWarmup
from speedrun_diffusion.callbacks.latent_writer import LatentWriter
from speedrun_diffusion.callbacks.samples import LogSamples

__all__ = [
    "AtomicCheckpointIO", "AtomicModelCheckpoint", "AutoGuidance", "EMA", "Evaluation", "GANWarmup", "LatentWriter",
    "LogSamples",
]
