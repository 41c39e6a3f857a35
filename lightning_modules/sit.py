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

from speedrun_diffusion.lightning_modules.diffusion import (
    TimeSampler,
    dimension_shift,
    euler_maruyama_sample,
    euler_ode_sample,
)
from speedrun_diffusion.lightning_modules.losses import flow_matching_loss
from speedrun_diffusion.lightning_modules.networks.dit import DiT, dit_preset
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe, LRSchedule, NonFinitePolicy


class SiT(DiffusionRecipe):
    """SiT baseline. ``model`` names a DiT Table 1 preset; ``depth``/``hidden_size``/``num_heads`` override it.

    ``time_shift``: 1.0 is vanilla SiT; "auto" uses s = sqrt(C·H·W / 4096) (SR-DiT / RAE shift),
    in training and sampling alike. ``tokenizer`` (any module with ``encode``/``decode``, frozen)
    makes it a latent model; latents are multiplied by ``latent_scale`` before diffusion.
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
        sampler: Literal["ode", "sde"] = "sde",
        num_sample_steps: int = 250,
        cfg_scale: float = 1.0,
        cfg_interval: tuple[float, float] | None = None,
        tokenizer: nn.Module | None = None,
        latent_scale: float = 1.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        min_lr: float = 0.0,
        fsdp_param_dtype: Literal["float32", "bfloat16"] | None = None,
        nonfinite: NonFinitePolicy = "skip",
    ) -> None:
        super().__init__(lr=lr, betas=betas, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         lr_schedule=lr_schedule, min_lr=min_lr, fsdp_param_dtype=fsdp_param_dtype,
                         nonfinite=nonfinite)
        self.save_hyperparameters(ignore=["tokenizer"])
        sizes = {k: v for k, v in dict(depth=depth, hidden_size=hidden_size, num_heads=num_heads).items() if v is not None}
        self.net = DiT(dit_preset(model, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                                  class_dropout_prob=class_dropout_prob, **sizes))
        self.tokenizer = tokenizer
        self.latent_scale = latent_scale
        self.freeze()
        dim = in_channels * input_size * input_size
        self.shift = dimension_shift(dim) if time_shift == "auto" else float(time_shift)
        self.time_sampler = TimeSampler(time_sampler, shift=self.shift)
        self.sampler = sampler
        self.num_sample_steps = num_sample_steps
        self.cfg_scale = cfg_scale
        self.cfg_interval = tuple(cfg_interval) if cfg_interval is not None else None

    # ---------------------------------------------------------------- training
    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x0 = batch["latent"] * self.latent_scale if "latent" in batch else self.encode(batch["image"])
        terms = flow_matching_loss(self.net, x0, batch["label"], self.time_sampler, generator=generator)
        return {"loss": terms["velocity"], **terms}

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        num_steps: int | None = None,
        cfg_scale: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: Literal["ode", "sde"] | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Class-conditional images in [-1, 1] (SiT sampling: Euler ODE or Euler–Maruyama SDE + CFG).

        With ``self.autoguide`` set (``callbacks.AutoGuidance``) the guide network replaces CFG (Karras et al.
        2024); its interval is on the flow time t the network sees (t = 1 noise) and ``cfg_scale`` is ignored."""
        cfg = self.net.cfg
        labels = labels.to(self.device)
        if noise is None:
            shape = (len(labels), cfg.in_channels, cfg.input_size, cfg.input_size)
            noise = torch.randn(shape, device=self.device, generator=generator)
        denoiser = self.flow_guidance(self.cfg_scale if cfg_scale is None else cfg_scale, self.cfg_interval)
        steps = num_steps or self.num_sample_steps
        velocity = lambda x, t: denoiser(x, t, labels)  # noqa: E731
        was_training = self.net.training
        self.net.eval()
        try:
            if (sampler or self.sampler) == "ode":
                x0 = euler_ode_sample(velocity, noise, steps, shift=self.shift, progress=progress)
            else:
                x0 = euler_maruyama_sample(velocity, noise, steps, shift=self.shift, generator=generator,
                                           progress=progress)
        finally:
            self.net.train(was_training)
        return self.decode(x0)
