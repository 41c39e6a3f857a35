"""`SRDiT`: "Speedrunning ImageNet Diffusion" — SiT-B/1 + SPRINT + REG/REPA + CFM on frozen INVAE latents.

Training (SR-DiT Sec. 3, reference/srdit/README "Loss"): latents x0 = tokenizer.encode(image)·0.3099 (or a
pre-computed ``batch["latent"]`` × 0.3099), targets zs = target_encoder(image) = [cls; patches] normalised
DINOv2 tokens (or ``batch["repa_target"]``), REG token = zs[:, 0]; the objective is ``SRDiTLoss``
(1 / 0.5 / 0.03 / 0.05) with the time shift s = √(C·H·W / 4096). Sampling: Euler–Maruyama SDE on
(latent, cls) with the official grid, no guidance for metrics (paper), CFG or path-drop guidance on a
shifted-t interval for pictures; latents decoded as tokenizer.decode(z / 0.3099).

Each Table 1 improvement is a switch: ``sprint``, ``rmsnorm``, ``rope``, ``qk_norm``, ``value_residual``
(and ``cfm_weight`` 0 / ``time_shift`` off for the last rows); configs/srdit/ablations/ holds the rows.

Data: batches of images (``{"image", "label"}``: INVAE encodes on the fly, DINOv2 targets on the fly) or of
cached latents from ``datamodules.LatentDataModule`` (``{"latent", "label"}`` plus ``"image"`` for on-the-fly
targets, or pre-computed ``"repa_target"``) — the official pipeline caches one INVAE posterior sample per image
and computes the DINOv2 targets from the stored image every step.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.checkpoints.srdit import load_invae_weights
from speedrun_diffusion.lightning_modules.compilation import CompileConfig
from speedrun_diffusion.lightning_modules.diffusion import (
    EulerMaruyama,
    GuidedDenoiser,
    SamplingConfig,
    dimension_shift,
)
from speedrun_diffusion.lightning_modules.latent_encoder import LatentMode, encode_latents
from speedrun_diffusion.lightning_modules.losses.srdit_loss import SRDiTLoss
from speedrun_diffusion.lightning_modules.networks.dit import dit_preset
from speedrun_diffusion.lightning_modules.networks.sprint import SprintConfig, SprintDiT, build_dit
from speedrun_diffusion.lightning_modules.nonfinite import NonFiniteConfig
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe
from speedrun_diffusion.lightning_modules.sharding import ShardingConfig

GuidanceMode = Literal["cfg", "path_drop"]


class SRDiT(DiffusionRecipe):
    """SR-DiT recipe. ``model`` names a SiT preset ("SiT-B/1"); ``depth``/``hidden_size``/``num_heads`` override it.

    ``tokenizer`` (frozen; ``encode``/``decode``, e.g. ``networks.invae.INVAE``) makes it a latent model
    — without one it diffuses pixels. ``target_encoder`` (frozen) maps images in [−1, 1] to (B, 1 + N, z)
    tokens [cls; patches] for REPA and REG (``networks.target_encoders.DINOv2Targets``); without one every
    batch must carry ``repa_target``. ``tokenizer_weights``: a local INVAE file (official ``e2e-invae`` keys,
    safetensors or a torch file) loaded strictly into ``tokenizer``. ``latent_mode``: images encoded on the fly
    use the posterior sample (official) or its mean.
    Defaults are the official train.sh settings (AdamW 1e-4 constant, betas (0.9, 0.999), wd 0) and sampler
    (Euler–Maruyama, 250 steps, no guidance for metrics). Guidance for pictures: ``guidance_mode`` picks the guide —
    "cfg" (the unconditional prediction) or "path_drop" (SR-DiT Sec. 3.7: the network with its sparse path dropped)
    — weighted by ``sampling.guidance_scale`` on the latent and ``cls_guidance_scale`` on the REG token (official:
    a scale <= 0 leaves the token conditional), on ``sampling.guidance_interval`` of the shifted t.
    """

    weight_loading_args = ("tokenizer_weights",)

    @classmethod
    def sampling_overrides(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Sampling needs no DINOv2 targets (REPA / REG are training terms)."""
        return {**super().sampling_overrides(hparams), "target_encoder": None}

    def __init__(
        self,
        model: str = "SiT-B/1",
        input_size: int = 16,
        in_channels: int = 32,
        num_classes: int = 1000,
        depth: int | None = None,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        class_dropout_prob: float = 0.1,
        z_dim: int = 768,
        projector_dim: int = 2048,
        repa_depth: int = 4,
        sprint: bool = True,
        sprint_encoder_blocks: int = 2,
        sprint_decoder_blocks: int = 2,
        sprint_drop_ratio: float = 0.75,
        path_drop_prob: float = 0.05,
        rmsnorm: bool = True,
        rope: bool = True,
        qk_norm: bool = True,
        value_residual: bool = True,
        repa_weight: float = 0.5,
        cls_weight: float = 0.03,
        cfm_weight: float = 0.05,
        shift_base: int = 4096,
        time_shift: bool = True,
        guidance_mode: GuidanceMode = "cfg",
        cls_guidance_scale: float = 1.0,
        tokenizer: nn.Module | None = None,
        latent_scale: float = 0.3099,
        latent_mode: LatentMode = "sample",
        target_encoder: nn.Module | None = None,
        tokenizer_weights: str | None = None,
        sampling: SamplingConfig = SamplingConfig(sampler=EulerMaruyama(t_last=0.04), num_steps=250,
                                                  guidance_scale=1.0, guidance_interval=(0.0, 1.0)),
        optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4),
        sharding: ShardingConfig = ShardingConfig(),
        nonfinite: NonFiniteConfig = NonFiniteConfig(),
        compile: CompileConfig = CompileConfig(),  # noqa: A002
    ) -> None:
        super().__init__(optimizer, sharding, nonfinite, sampling, compile=compile)
        self.save_hyperparameters(ignore=["tokenizer", "target_encoder"])
        sizes = {k: v for k, v in dict(depth=depth, hidden_size=hidden_size, num_heads=num_heads).items()
                 if v is not None}
        cfg = dit_preset(
            model, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
            class_dropout_prob=class_dropout_prob, norm="rmsnorm" if rmsnorm else "layernorm", rope=rope,
            qk_norm=qk_norm, value_residual=value_residual, cls_token_dim=z_dim, z_dims=(z_dim,),
            projector_dim=projector_dim, repa_depth=sprint_encoder_blocks if sprint else repa_depth, **sizes,
        )
        routing = SprintConfig(sprint_encoder_blocks, sprint_decoder_blocks, sprint_drop_ratio, path_drop_prob)
        self.net = build_dit(cfg, routing if sprint else None)
        if tokenizer_weights is not None:
            load_invae_weights(tokenizer, tokenizer_weights)
        self.tokenizer = tokenizer
        self.target_encoder = target_encoder
        self.latent_scale = latent_scale
        if latent_mode not in ("sample", "mean"):
            raise ValueError(f"latent_mode must be 'sample' or 'mean', got {latent_mode!r}")
        self.latent_mode = latent_mode
        self.freeze()
        self.shift = dimension_shift(in_channels * input_size * input_size, shift_base) if time_shift else 1.0
        self.loss_fn = SRDiTLoss(repa_weight=repa_weight, cls_weight=cls_weight, cfm_weight=cfm_weight,
                                 shift=self.shift)
        if guidance_mode not in ("cfg", "path_drop"):
            raise ValueError(f"guidance_mode must be 'cfg' or 'path_drop', got {guidance_mode!r}")
        self.guidance_mode = guidance_mode
        self.cls_guidance_scale = cls_guidance_scale

    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.tokenizer, self.target_encoder) if m is not None]

    # ---------------------------------------------------------------- training
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images → latent_scale · (INVAE posterior sample, as the official cache, or its mean: ``latent_mode``)."""
        if self.tokenizer is None:
            return images
        return encode_latents(self.tokenizer, images, self.latent_mode) * self.latent_scale
    # decode (DiffusionRecipe): tokenizer.decode(z / 0.3099), clamped, as the official generate.py

    @torch.no_grad()
    def repa_targets(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, 1 + N, z) normalised [cls; patches] tokens: ``batch["repa_target"]`` or the target encoder's."""
        if "repa_target" in batch:
            zs = batch["repa_target"]
        elif self.target_encoder is None:
            raise ValueError("SRDiT needs a target_encoder or batches with 'repa_target'")
        elif "image" not in batch:
            raise ValueError("SRDiT computes DINOv2 targets from batch['image']: load the images with the cached "
                             "latents (LatentDataModule(with_images=True)) or pre-computed 'repa_target'")
        else:
            zs = self.target_encoder(batch["image"])
        cfg = self.net.cfg
        want = (cfg.num_extra_tokens + cfg.num_tokens, cfg.cls_token_dim)
        if zs.ndim != 3 or tuple(zs.shape[1:]) != want:
            raise ValueError(f"REPA/REG targets must be (B, {want[0]}, {want[1]}) = [cls; {cfg.grid_size}x"
                             f"{cfg.grid_size} patches] x z_dim, got {tuple(zs.shape)} (check the target encoder's "
                             f"resolution / patch size and z_dim)")
        return zs

    def diffusion_input(self, batch: dict[str, Tensor]) -> Tensor:
        """x0 = latent_scale · (cached ``batch["latent"]`` or tokenizer.encode(``batch["image"]``))."""
        x0 = batch["latent"].float() * self.latent_scale if "latent" in batch else self.encode(batch["image"])
        cfg = self.net.cfg
        want = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if tuple(x0.shape[1:]) != want:
            source = "batch['latent']" if "latent" in batch else "tokenizer.encode(batch['image'])"
            raise ValueError(f"{source} has shape {tuple(x0.shape)}, the network expects (B, {want[0]}, {want[1]}, "
                             f"{want[2]}) (in_channels / input_size)")
        return x0

    def on_fit_start(self) -> None:
        """Cached latents must have been written with this module's latent scale (manifest ``scale``)."""
        manifest = getattr(self.trainer.datamodule, "manifest", None) if self._trainer is not None else None
        scale = manifest.get("scale") if isinstance(manifest, dict) else None
        if scale is not None and abs(float(scale) - self.latent_scale) > 1e-6:
            raise ValueError(f"cached latents were written with scale {scale} but SRDiT.latent_scale is "
                             f"{self.latent_scale}; set model.init_args.latent_scale: {scale}")

    def _path_drop(self, generator: torch.Generator | None) -> Tensor | None:
        """One path-drop decision per step for the whole (global) batch, broadcast from rank 0 (official)."""
        if not isinstance(self.net, SprintDiT) or not self.net.training:
            return None
        u = torch.rand(1, device=self.device, generator=generator)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(u, src=0)
        return u[0] < self.net.sprint.path_drop_prob

    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x0 = self.diffusion_input(batch)
        zs = self.repa_targets(batch).to(x0.dtype)
        extras = {}
        path_drop = self._path_drop(generator)
        if path_drop is not None:
            extras["path_drop"] = path_drop
        return self.loss_fn(self.net, x0, batch["label"], [zs], zs[:, 0], generator=generator, **extras)

    # ---------------------------------------------------------------- sampling
    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The pair (latent noise, REG-token noise) the sampler integrates together (SR-DiT samplers.py)."""
        cfg = self.net.cfg
        return (torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=self.device,
                            generator=generator),
                torch.randn(batch, cfg.cls_token_dim, device=self.device, generator=generator))

    def generate(self, labels: Tensor, noise: tuple[Tensor, Tensor], options: SamplingConfig,
                 generator: torch.Generator | None, progress: bool, guidance_mode: GuidanceMode | None = None,
                 cls_guidance_scale: float | None = None) -> Tensor:
        """SR-DiT samplers.py: the sampler on (latent, cls), optional CFG / path-drop guidance (``guidance_mode``,
        ``cls_guidance_scale``: None keeps the recipe's), decoded to images in [−1, 1].

        With ``self.autoguide`` set (``callbacks.AutoGuidance``; not in the SR-DiT paper) the guide network — an
        SR-DiT net predicting (v, v_cls) too — replaces CFG / PDG with its scale on both outputs, on its interval
        of the shifted t the network sees; the guidance arguments are then ignored."""
        mode = self.guidance_mode if guidance_mode is None else guidance_mode
        cls_scale = self.cls_guidance_scale if cls_guidance_scale is None else cls_guidance_scale
        null = self.net.cfg.num_classes
        # official: the cls drift is guided with its own scale, conditional when that scale is <= 0
        scales, interval = (options.guidance_scale, cls_scale if cls_scale > 0 else 1.0), options.guidance_interval
        guide_fn = None
        if mode == "path_drop" and not isinstance(self.net, SprintDiT):
            raise ValueError("path-drop guidance needs the SPRINT network (sprint=True)")
        if mode == "path_drop":
            guide_fn = lambda x, t, y: self.net.velocity(x, t, torch.full_like(y, null), uncond=True)  # noqa: E731
        ag = self.autoguide
        if ag is not None:  # autoguidance replaces CFG / PDG: the guide's (v, v_cls) with one weight for both
            scales, interval = (ag.scale, ag.scale), ag.interval
            guide_fn = lambda x, t, y: ag.net.velocity(x, t, y)  # noqa: E731
        denoiser = GuidedDenoiser(self.net.velocity, scales=scales, guide_fn=guide_fn, null_label=null,
                                  interval=interval)
        x0, _ = options.sampler.sample(denoiser.with_labels(labels), noise, options.num_steps, shift=self.shift,
                                       generator=generator, progress=progress)
        return self.decode(x0)


__all__ = ["SRDiT"]
