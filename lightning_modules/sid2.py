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
  reads (``DDPM.gamma_on``), static clipping, CFG "guidance = 1.0" — the library's guidance_scale w = 1 + g = 2 —
  on a log-SNR interval ((−3, 5) / (−1.5, 5) / (0, 5) at 512 / 256 / 128: ``guidance_interval: auto``).

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

from speedrun_diffusion.lightning_modules.compilation import CompileConfig
from speedrun_diffusion.lightning_modules.diffusion.guidance import GuidedDenoiser
from speedrun_diffusion.lightning_modules.diffusion.loss_weighting import sid2_loss_bias, time_shifted_bias
from speedrun_diffusion.lightning_modules.diffusion.sampling import DDPM, SamplingConfig
from speedrun_diffusion.lightning_modules.diffusion.vp import LogSNRSchedule, ScheduleKind, alpha_sigma, x_from_v
from speedrun_diffusion.lightning_modules.losses.sigmoid_loss import Weighting, vp_diffusion_loss
from speedrun_diffusion.lightning_modules.networks.uvit import PresetName, UViT, UViTConfig, uvit_preset
from speedrun_diffusion.lightning_modules.nonfinite import NonFiniteConfig
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe
from speedrun_diffusion.lightning_modules.sharding import ShardingConfig
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

    Sampling (``sampling``): the ``DDPM`` sampler object holds A.4's γ (``gamma``, logvar_type), the variance it
    weights (``gamma_on``: "small" = σ²_{t→s}, the Sec. 1.1 text, default; "large" = σ²_{t|s}, the earlier public
    code's reading) and static clipping (``clip_x``); ``guidance_scale`` is the library's w = 1 + g of the paper's
    x̂ = (1 + g)·cond − g·uncond (A.4's "guidance = 1.0" is 2.0); ``guidance_interval`` is in log-SNR ("auto": A.4
    per resolution, None: every step).

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
        init_from: str | None = None,
        init_from_ema: bool = True,
        sampling: SamplingConfig = SamplingConfig(sampler=DDPM(gamma=0.3, gamma_on="small", clip_x=1.0), num_steps=512,
                                                  guidance_scale=2.0, guidance_interval="auto"),
        optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4, betas=(0.9, 0.99), eps=1e-12, warmup_steps=10_000),
        sharding: ShardingConfig = ShardingConfig(),
        nonfinite: NonFiniteConfig = NonFiniteConfig(),
        compile: CompileConfig = CompileConfig(),  # noqa: A002
    ) -> None:
        super().__init__(optimizer, sharding, nonfinite, sampling, compile=compile)
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
        self.resolution = resolution
        if init_from:
            self.load_net_weights(init_from, use_ema=init_from_ema)

    process = "vp"  # DDPM steps a VP process

    def paper_guidance_interval(self) -> tuple[float, float]:
        """A.4's log-SNR guidance interval at this resolution (``guidance_interval: auto``)."""
        return sid2_guidance_interval(self.resolution)

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

    def noise_shape(self) -> tuple[int, int, int]:
        cfg = self.net.cfg
        return (cfg.in_channels, cfg.resolution, cfg.resolution)

    def generate(self, labels: Tensor, noise: Tensor, options: SamplingConfig, generator: torch.Generator | None,
                 progress: bool) -> Tensor:
        """DDPM ancestral sampling (SiD2 eq. 3) with interval CFG on x̂; returns the last x̂, in [−clip_x, clip_x]
        (static clipping; unclipped if the DDPM's clip_x is None).

        With ``self.autoguide`` set (``callbacks.AutoGuidance``; SiD2 App. A.3 discusses but does not use it) the
        guide's x̂ replaces the unconditional one, D_guide + w·(D − D_guide) with the guide's w and its log-SNR
        interval; the CFG arguments are then ignored."""
        ag = self.autoguide
        if ag is not None:  # the guide's v → x̂ exactly as the main net's, so both are the same parameterisation
            denoiser = GuidedDenoiser(self.x_prediction, scale=ag.scale, interval=ag.interval, interval_on="logsnr",
                                      schedule=self.sample_schedule,
                                      guide_fn=lambda z, t, y: self.x_prediction(z, t, y, net=ag.net))
        else:
            denoiser = GuidedDenoiser(self.x_prediction, scale=options.guidance_scale, null_label=self.num_classes,
                                      interval=options.guidance_interval, interval_on="logsnr",
                                      schedule=self.sample_schedule)
        return options.sampler.sample(denoiser.with_labels(labels), noise, self.sample_schedule, options.num_steps,
                                      generator=generator, progress=progress)

    # ---------------------------------------------------------------- fine-tuning (SiD2 Sec. 2.2)
    def load_net_weights(self, path: str | Path, use_ema: bool = True) -> None:
        """Load network weights from a Lightning checkpoint (its EMA shadow if present and ``use_ema``)
        or a safetensors file (e.g. ``EMA(export_path=...)``); every tensor must be present with its shape."""
        if Path(path).suffix == ".safetensors":
            weights = read_state_dict(path, "init_from weights")
        else:
            weights, _ = network_weights(read_checkpoint(path, "init_from checkpoint"), "net.", use_ema, source=path)
        load_exact(self.net, weights, f"init_from {path} (fine-tuning needs the same network, SiD2 Sec. 2.2)")
