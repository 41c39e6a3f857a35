"""`SiD2`: Simpler Diffusion v2 — a pixel-space Residual U-ViT trained with the sigmoid loss.

Hoogeboom et al. 2024 ("Simpler Diffusion (SiD2): 1.5 FID on ImageNet512 with pixel-space
diffusion"). The recipe, with the paper's App. A.4 values as defaults:

* network: Residual U-ViT (Sec. 2.3, eq. 5), presets "small" / "flop_heavy" at 128 / 256 / 512;
* process: VP, λ_t = 'cosine_interpolated_low_32_high_512', v-prediction (Sec. 1.1, A.4);
* loss: sigmoid weighting σ(b − λ) with b = 0 / −1 / −3 at 128 / 256 / 512 (eq. 4, Table 1), optionally
  a time-shifted bias (App. B.1), the Haar power loss (App. A.1) or EDM-monotonic (Fig. 5 baseline);
* optimiser: Adam β = (0.9, 0.99), ε = 1e-12, lr 1e-4, 10k warm-up, no weight decay (EMA 0.9999 is
  the `callbacks.EMA` of the configs);
* sampling: DDPM ancestral (eq. 3), 512 steps, γ = 0.3 on the small variance σ_{t→s} as the Sec. 1.1 text
  reads (``gamma_on``), static clipping, CFG "guidance = 1.0" on a log-SNR interval ((−3, 5) / (−1.5, 5) /
  (0, 5) at 512 / 256 / 128).

The module is thin: network in `networks.uvit`, weighting in `diffusion.loss_weighting`, the loss in
`losses.sigmoid_loss` / `losses.power_loss`, the sampler and guidance in `diffusion`.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion.guidance import GuidedDenoiser
from speedrun_diffusion.lightning_modules.diffusion.loss_weighting import sid2_loss_bias, time_shifted_bias
from speedrun_diffusion.lightning_modules.diffusion.samplers import ddpm_ancestral_sample
from speedrun_diffusion.lightning_modules.diffusion.vp import LogSNRSchedule, ScheduleKind, alpha_sigma, x_from_v
from speedrun_diffusion.lightning_modules.losses.sigmoid_loss import Weighting, vp_diffusion_loss
from speedrun_diffusion.lightning_modules.networks.uvit import PresetName, UViT, UViTConfig, uvit_preset
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe, LRSchedule, NonFinitePolicy
from speedrun_diffusion.lightning_modules.weights import load_exact, network_weights, read_checkpoint, read_state_dict

__all__ = ["SID2_GUIDANCE_INTERVAL", "SiD2", "sid2_guidance_interval"]

# SiD2 App. A.4 guidance_interval (log-SNR) per resolution; the lower bound moves by 1.5 per 2× (Sec. 4.1).
SID2_GUIDANCE_INTERVAL: dict[int, tuple[float, float]] = {128: (0.0, 5.0), 256: (-1.5, 5.0), 512: (-3.0, 5.0)}


def sid2_guidance_interval(resolution: int) -> tuple[float, float]:
    """A.4 interval; other resolutions extrapolate the lower bound −1.5·log₂(resolution/128)."""
    if resolution in SID2_GUIDANCE_INTERVAL:
        return SID2_GUIDANCE_INTERVAL[resolution]
    return (-1.5 * math.log2(resolution / 128), 5.0)


class SiD2(DiffusionRecipe):
    """SiD2 recipe. ``preset`` names an App. A.4 network; any network field given here overrides it.

    Network args (None keeps the preset's value): ``patch_size``, ``channels``, ``block_types``
    ("resblock" / "transformer" per level), ``num_updown_blocks`` (symmetric) or ``num_down_blocks`` /
    ``num_up_blocks`` (asymmetric E/D, Sec. 4.3), ``num_mid_blocks``, ``block_dropout`` (per level),
    ``head_dim``. With ``preset=None`` the fields start from ``UViTConfig``'s defaults.

    Loss: ``weighting`` "sigmoid" | "edm_monotonic" | "power"; ``loss_bias`` b (None: A.4 per
    resolution); ``bias_start`` / ``bias_warmup_steps`` give the App. B.1 time-shifted bias; ``power_levels``
    the Haar levels of the power loss. ``schedule`` is the training λ_t; sampling always uses
    ``sample_schedule`` (SiD2 Sec. 4.1 fixes it to the interpolated cosine).

    Sampling: ``guidance`` in the paper's convention (x̂ = (1 + g)·cond − g·uncond; 0 = none);
    ``guidance_interval`` in log-SNR ("auto": A.4 per resolution, None: everywhere); ``gamma`` is A.4's
    logvar_type and ``gamma_on`` the variance it weights: "small" = σ²_{t→s} (Sec. 1.1 text, default),
    "large" = σ²_{t|s} (the earlier public code's reading; ``ddpm_ancestral_sample`` has both closed forms).

    ``init_from``: a Lightning checkpoint or safetensors file whose network weights (EMA ones if the
    checkpoint has them and ``init_from_ema``) initialise this model — the 256 → 512 flop-heavy
    fine-tune of Sec. 2.2 (same parameters, the RoPE tables are rebuilt for the new grid).
    """

    weight_loading_args = ("init_from",)

    def __init__(
        self,
        preset: PresetName | None = "small",
        resolution: int = 512,
        in_channels: int = 3,
        num_classes: int = 1000,
        patch_size: int | None = None,
        channels: list[int] | None = None,
        block_types: list[Literal["resblock", "transformer"]] | None = None,
        num_updown_blocks: list[int] | None = None,
        num_down_blocks: list[int] | None = None,
        num_up_blocks: list[int] | None = None,
        num_mid_blocks: int | None = None,
        block_dropout: list[float] | None = None,
        head_dim: int | None = None,
        class_dropout_prob: float = 0.1,
        schedule: ScheduleKind = "interpolated_cosine",
        sample_schedule: ScheduleKind = "interpolated_cosine",
        schedule_low: int = 32,
        schedule_high: int = 512,
        weighting: Weighting = "sigmoid",
        loss_bias: float | None = None,
        bias_start: float | None = None,
        bias_warmup_steps: int = 0,
        power_levels: int = 0,
        num_sample_steps: int = 512,
        gamma: float = 0.3,
        gamma_on: Literal["small", "large"] = "small",
        clip_x: float | None = 1.0,
        guidance: float = 1.0,
        guidance_interval: tuple[float, float] | Literal["auto"] | None = "auto",
        init_from: str | None = None,
        init_from_ema: bool = True,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        adam_eps: float = 1e-12,
        weight_decay: float = 0.0,
        warmup_steps: int = 10_000,
        lr_schedule: LRSchedule = "constant",
        min_lr: float = 0.0,
        fsdp_param_dtype: Literal["float32", "bfloat16"] | None = None,
        nonfinite: NonFinitePolicy = "skip",
    ) -> None:
        super().__init__(lr=lr, betas=betas, weight_decay=weight_decay, adam_eps=adam_eps, warmup_steps=warmup_steps,
                         lr_schedule=lr_schedule, min_lr=min_lr, fsdp_param_dtype=fsdp_param_dtype,
                         nonfinite=nonfinite)
        self.save_hyperparameters()
        overrides = dict(
            patch_size=patch_size, channels=channels, block_types=block_types, num_updown_blocks=num_updown_blocks,
            num_down_blocks=num_down_blocks, num_up_blocks=num_up_blocks, num_mid_blocks=num_mid_blocks,
            block_dropout=block_dropout, head_dim=head_dim,
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        fixed = dict(in_channels=in_channels, num_classes=num_classes, class_dropout_prob=class_dropout_prob)
        if preset is None:
            updown = overrides.pop("num_updown_blocks", None)
            if updown is not None:
                overrides = {"num_down_blocks": updown, "num_up_blocks": updown, **overrides}
            cfg = replace(UViTConfig(resolution=resolution),
                          **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}, **fixed)
        else:
            cfg = uvit_preset(preset, resolution, **overrides, **fixed)
        self.net = UViT(cfg)
        sched = dict(image_size=resolution, base_size=64, low=schedule_low, high=schedule_high)
        self.schedule = LogSNRSchedule(schedule, **sched)
        self.sample_schedule = LogSNRSchedule(sample_schedule, **sched)
        if weighting not in ("sigmoid", "edm_monotonic", "power"):
            raise ValueError(f"unknown weighting {weighting!r}; use 'sigmoid', 'edm_monotonic' or 'power'")
        self.weighting = weighting
        self.loss_bias = sid2_loss_bias(resolution) if loss_bias is None else float(loss_bias)
        self.bias_start = bias_start
        self.bias_warmup_steps = bias_warmup_steps
        self.power_levels = power_levels
        self.num_sample_steps = num_sample_steps
        self.gamma = gamma
        if gamma_on not in ("small", "large"):
            raise ValueError(f"gamma_on must be 'small' (SiD2 Sec. 1.1 text) or 'large', got {gamma_on!r}")
        self.gamma_on = gamma_on
        self.clip_x = clip_x
        self.guidance = guidance
        if guidance_interval == "auto":
            guidance_interval = sid2_guidance_interval(resolution)
        self.guidance_interval = tuple(guidance_interval) if guidance_interval is not None else None
        if init_from:
            self.load_net_weights(init_from, use_ema=init_from_ema)

    def shard_units(self) -> list[torch.nn.Module]:
        """FSDP2 units: every ResBlock and transformer block of the U-ViT, at every level."""
        return self.net.blocks

    # ---------------------------------------------------------------- training
    def current_bias(self, step: int | None = None) -> float:
        """Loss bias at ``step`` (default: the trainer's global step): constant, or SiD2 App. B.1's warm-up."""
        if self.bias_start is None:
            return self.loss_bias
        step = self.global_step if step is None else step
        return time_shifted_bias(step, self.bias_start, self.loss_bias, self.bias_warmup_steps)

    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        bias = self.current_bias()
        terms = vp_diffusion_loss(
            self.net, batch["image"], batch["label"], self.schedule, self.weighting, bias, self.power_levels,
            generator=generator,
        )
        return {"loss": terms[self.weighting], **terms, "bias": torch.tensor(bias, device=self.device)}

    # ---------------------------------------------------------------- sampling
    def x_prediction(self, z: Tensor, t: Tensor, y: Tensor, net: torch.nn.Module | None = None) -> Tensor:
        """x̂(z_t, t, y) = α·z − σ·v̂ on the sampling schedule (v-parameterisation, SiD2 A.4 mean_type = v);
        ``net`` (default ``self.net``) is e.g. the autoguidance guide, a U-ViT predicting v from λ as well."""
        logsnr = self.sample_schedule(t.float())
        alpha, sigma = alpha_sigma(logsnr)
        v = (self.net if net is None else net)(z, logsnr, y)
        return x_from_v(z.float(), v.float(), alpha, sigma)

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        num_steps: int | None = None,
        cfg_scale: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        guidance: float | None = None,
        guidance_interval: tuple[float, float] | Literal["auto"] | None = "auto",
        gamma: float | None = None,
        gamma_on: Literal["small", "large"] | None = None,
    ) -> Tensor:
        """Class-conditional images in [-1, 1] (static clipping): DDPM ancestral sampling (SiD2 eq. 3) with interval CFG.

        ``guidance`` is the paper's g (default: the module's, 1.0); ``cfg_scale`` is the library's
        w = 1 + g and overrides it. ``guidance_interval="auto"`` uses the module's interval.
        ``gamma`` / ``gamma_on`` (default: the module's) set the DDPM step variance.
        With ``self.autoguide`` set (``callbacks.AutoGuidance``; SiD2 App. A.3 discusses but does not use it) the
        guide's x̂ replaces the unconditional one, D_guide + w·(D − D_guide) with the guide's w and its log-SNR
        interval; the CFG arguments are then ignored.
        """
        cfg = self.net.cfg
        labels = labels.to(self.device)
        if noise is None:
            shape = (len(labels), cfg.in_channels, cfg.resolution, cfg.resolution)
            noise = torch.randn(shape, device=self.device, generator=generator)
        scale = cfg_scale if cfg_scale is not None else 1.0 + (self.guidance if guidance is None else guidance)
        interval = self.guidance_interval if guidance_interval == "auto" else guidance_interval
        ag = self.autoguide
        if ag is not None:  # the guide's v → x̂ exactly as the main net's, so both are the same parameterisation
            denoiser = GuidedDenoiser(self.x_prediction, scale=ag.scale, interval=ag.interval, interval_on="logsnr",
                                      schedule=self.sample_schedule,
                                      guide_fn=lambda z, t, y: self.x_prediction(z, t, y, net=ag.net))
        else:
            denoiser = GuidedDenoiser(self.x_prediction, scale=scale, null_label=cfg.num_classes, interval=interval,
                                      interval_on="logsnr", schedule=self.sample_schedule)
        was_training = self.net.training
        self.net.eval()
        try:
            x = ddpm_ancestral_sample(
                denoiser.with_labels(labels), noise, self.sample_schedule, num_steps or self.num_sample_steps,
                gamma=self.gamma if gamma is None else gamma, clip_x=self.clip_x, generator=generator,
                progress=progress, gamma_on=self.gamma_on if gamma_on is None else gamma_on,
            )
        finally:
            self.net.train(was_training)
        return x  # in [−clip_x, clip_x]: the sampler's last x̂ is clipped (unclipped if clip_x is None)

    # ---------------------------------------------------------------- fine-tuning (SiD2 Sec. 2.2)
    def load_net_weights(self, path: str | Path, use_ema: bool = True) -> None:
        """Load network weights from a Lightning checkpoint (its EMA shadow if present and ``use_ema``)
        or a safetensors file (e.g. ``EMA(export_path=...)``); every tensor must be present with its shape."""
        if Path(path).suffix == ".safetensors":
            weights = read_state_dict(path, "init_from weights")
        else:
            weights, _ = network_weights(read_checkpoint(path, "init_from checkpoint"), "net.", use_ema, source=path)
        load_exact(self.net, weights, f"init_from {path} (fine-tuning needs the same network, SiD2 Sec. 2.2)")
