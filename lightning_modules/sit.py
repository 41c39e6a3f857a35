"""`SiT`: the vanilla SiT / DiT flow-matching baseline every paper compares against.

SiT (Ma et al. 2024) with the linear interpolant and velocity prediction: SR-DiT Table 1 "SiT-B/2",
RAE's DiT-XL rows. It trains on pixels (patch p) or on tokenizer latents, samples with Euler (ODE)
or Euler–Maruyama (SDE, 250 NFE in the papers) and classifier-free guidance, optionally on an
interval of t. It is the first recipe to train end to end and the reference point of every
speed-up claim.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.compilation import CompileConfig
from speedrun_diffusion.lightning_modules.diffusion import EulerMaruyama, SamplingConfig, TimeSampler, dimension_shift
from speedrun_diffusion.lightning_modules.losses import flow_matching_loss
from speedrun_diffusion.lightning_modules.networks.dit import DiT, dit_preset
from speedrun_diffusion.lightning_modules.nonfinite import NonFiniteConfig
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe
from speedrun_diffusion.lightning_modules.sharding import ShardingConfig


class SiT(DiffusionRecipe):
    """SiT baseline. ``model`` names a DiT Table 1 preset; ``depth``/``hidden_size``/``num_heads`` override it.

    ``time_shift``: 1.0 is vanilla SiT; "auto" uses s = sqrt(C·H·W / 4096) (SR-DiT / RAE shift),
    in training and sampling alike. ``tokenizer`` (any module with ``encode``/``decode``, frozen)
    makes it a latent model; latents are multiplied by ``latent_scale`` before diffusion.
    Sampling (SiT): Euler–Maruyama, 250 steps, CFG off; optimiser (SiT): AdamW 1e-4 constant.
    """

    def __init__(
        self,
        model: str = "SiT-B/2",
        input_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 1000,
        depth: int | None = None,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        class_dropout_prob: float = 0.1,
        time_sampler: Literal["uniform", "logit_normal"] = "uniform",
        time_shift: float | Literal["auto"] = 1.0,
        tokenizer: nn.Module | None = None,
        latent_scale: float = 1.0,
        sampling: SamplingConfig = SamplingConfig(sampler=EulerMaruyama(), num_steps=250),
        optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4),
        sharding: ShardingConfig = ShardingConfig(),
        nonfinite: NonFiniteConfig = NonFiniteConfig(),
        compile: CompileConfig = CompileConfig(),  # noqa: A002
    ) -> None:
        super().__init__(optimizer, sharding, nonfinite, sampling, compile=compile)
        self.save_hyperparameters(ignore=["tokenizer"])
        sizes = {k: v for k, v in dict(depth=depth, hidden_size=hidden_size, num_heads=num_heads).items()
                 if v is not None}
        self.net = DiT(dit_preset(model, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                                  class_dropout_prob=class_dropout_prob, **sizes))
        self.tokenizer = tokenizer
        self.latent_scale = latent_scale
        self.freeze()
        dim = in_channels * input_size * input_size
        self.shift = dimension_shift(dim) if time_shift == "auto" else float(time_shift)
        self.time_sampler = TimeSampler(time_sampler, shift=self.shift)

    # ---------------------------------------------------------------- training
    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x0 = batch["latent"] * self.latent_scale if "latent" in batch else self.encode(batch["image"])
        terms = flow_matching_loss(self.net, x0, batch["label"], self.time_sampler, generator=generator)
        return {"loss": terms["velocity"], **terms}

    # ---------------------------------------------------------------- sampling
    def noise_shape(self) -> tuple[int, int, int]:
        cfg = self.net.cfg
        return (cfg.in_channels, cfg.input_size, cfg.input_size)

    def generate(self, labels: Tensor, noise: Tensor, options: SamplingConfig, generator: torch.Generator | None,
                 progress: bool) -> Tensor:
        """SiT sampling: the flow sampler on the CFG-guided velocity, decoded to images (pixels: clamped). With
        ``self.autoguide`` set (``callbacks.AutoGuidance``) the guide network replaces CFG (Karras et al. 2024); its
        interval is on the flow time t the network sees (t = 1 noise) and ``guidance_scale`` is ignored."""
        denoiser = self.flow_guidance(options.guidance_scale, options.guidance_interval)
        x0 = options.sampler.sample(denoiser.with_labels(labels), noise, options.num_steps, shift=self.shift,
                                    generator=generator, progress=progress)
        return self.decode(x0)
