"""`SpeedDiff`: end-to-end ViT-VAE + Refined-DiT, trained jointly with TPR and optional REPA++ (SpeedDiff supp.
Algorithm 1, A.1–A.3, Tab. 14).

    x0 ─ViT-VAE encoder─▶ q(z0|x0) ─sample─▶ z0 ─▶ L_VAE (MSE + LPIPS + 0.1·GAN + 1e-5·KL)
                                              └─▶ z_t ─Refined-DiT─▶ v̂ ─▶ L_Diff, L_TPR = D(z_t − t·v̂) vs x0
    one AdamW step on (φ, ψ, θ, ω) for L = L_VAE + L_Diff + L_TPR (+ L_REPA++), then one step of the
    PatchGAN discriminator (spectral norm, hinge + 0.05·LeCam) on sg(x̂_vae).

The math is ``losses.speeddiff_loss``; this module wires networks, optimizers and sampling. Manual
optimisation (two optimizers): ``trainer.global_step`` counts the joint steps; ``self.gan_phase``
(``callbacks.GANWarmup``; SpeedDiff: everything on from step 0) gates LPIPS, discriminator updates and the
adversarial term. ``self.tokenizer`` is the trained VAE (``encode`` / ``decode`` as every tokenizer);
``self.net`` the denoiser (EMA follows it; the VAE is used as trained).

AutoGuidance bad model (A.3.1): ``frozen_vae`` loads the VAE of a SpeedDiff checkpoint and freezes it; only
the diffusion loss is trained (TPR / REPA++ if their weights are set), e.g. with half the blocks and half
the heads (``configs/speeddiff/bad_model_*.yaml``). ``callbacks.AutoGuidance`` then guides the main model
with it; sampling is Euler–Maruyama, 250 NFE (Tab. 14), CFG as the alternative.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.compilation import CompileConfig, compiled_parts
from speedrun_diffusion.lightning_modules.diffusion import EulerMaruyama, SamplingConfig, TimeSampler
from speedrun_diffusion.lightning_modules.eval_mode import eval_mode
from speedrun_diffusion.lightning_modules.gan_recipe import GANRecipe
from speedrun_diffusion.lightning_modules.losses.gan import LeCamRegularizer, select_gan_losses
from speedrun_diffusion.lightning_modules.losses.lpips import LPIPS
from speedrun_diffusion.lightning_modules.losses.repa_pp import DIFFUSION_REPA_DEPTH, REPAPlusPlus
from speedrun_diffusion.lightning_modules.losses.speeddiff_loss import (
    SpeedDiffWeights,
    speeddiff_discriminator_losses,
    speeddiff_generator_losses,
)
from speedrun_diffusion.lightning_modules.networks.discriminators import PatchGANDiscriminator
from speedrun_diffusion.lightning_modules.networks.dit import DiT, refined_dit_preset
from speedrun_diffusion.lightning_modules.networks.invae import INVAE, INVAEConfig
from speedrun_diffusion.lightning_modules.networks.target_encoders import DINOv2Targets
from speedrun_diffusion.lightning_modules.networks.vit_vae import ViTVAE, vit_vae_preset
from speedrun_diffusion.lightning_modules.nonfinite import NonFiniteConfig
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from speedrun_diffusion.lightning_modules.sharding import ShardingConfig
from speedrun_diffusion.lightning_modules.weights import check_written_by, load_exact, read_checkpoint, weights_under

log = logging.getLogger(__name__)

# SpeedDiff init args that define the VAE's architecture (rebuilt from a checkpoint for ``frozen_vae``)
VAE_ARGS = ("vae", "resolution", "vae_overrides")


def speeddiff_vae(vae: str = "B", resolution: int = 256, vae_overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """ViT-VAE-B/L/XL at ``resolution`` (A.1.1, Tab. 14), or "cnn": the f16d32 CNN-VAE of Tab. 10 (the INVAE
    architecture, 70 M); ``vae_overrides`` replace config fields (tiny configs)."""
    overrides = dict(vae_overrides or {})
    if vae.lower() == "cnn":
        return INVAE(INVAEConfig(resolution=resolution, scaling_factor=1.0, **overrides))
    return ViTVAE(vit_vae_preset(vae, resolution, **overrides))


def speeddiff_denoiser(h: Mapping[str, Any], latent_shape: tuple[int, int, int]) -> DiT:
    """Refined-DiT-B/L/XL (A.1.2) or the Tab. 10 baseline "DiT-XL/1" on ``latent_shape`` latents, from the network
    arguments of ``SpeedDiff`` in ``h`` (its hyper-parameters: ``model``, ``num_classes``, ``class_dropout_prob``;
    ``depth`` / ``hidden_size`` / ``num_heads`` override the preset — the bad model halves each, A.3.1)."""
    channels, size, _ = latent_shape
    sizes = {k: h[k] for k in ("depth", "hidden_size", "num_heads") if h[k] is not None}
    return DiT(refined_dit_preset(h["model"], input_size=size, in_channels=channels, num_classes=h["num_classes"],
                                  class_dropout_prob=h["class_dropout_prob"], **sizes))


def load_speeddiff_vae(path: str | Path) -> nn.Module:
    """The trained VAE of a ``SpeedDiff`` checkpoint (architecture from its hyper-parameters, weights from its
    ``tokenizer.*`` tensors), frozen, in eval mode (A.3.1: the bad model trains on the 200-epoch VAE)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"frozen_vae checkpoint not found: {path}")
    checkpoint = read_checkpoint(path, "frozen_vae checkpoint")
    check_written_by(checkpoint, SpeedDiff.recipe_name(), f"frozen_vae {path}", "pass a checkpoint of SpeedDiff")
    hparams = checkpoint.get("hyper_parameters") or {}
    vae = speeddiff_vae(**{k: hparams[k] for k in VAE_ARGS if k in hparams})
    load_exact(vae, weights_under(checkpoint.get("state_dict") or {}, "tokenizer."),
               f"frozen_vae {path} (the VAE its hyper-parameters describe)")
    return vae.requires_grad_(False).eval()


class SpeedDiff(GANRecipe):
    """SpeedDiff (Algorithm 1). Defaults are SpeedDiff-B at 256 without REPA++ (Tab. 14).

    Networks: ``vae`` ("B" / "L" / "XL" ViT-VAE, or "cnn"), ``resolution`` (256: p 16, 512: p 32; the latent is
    32 × 16 × 16 either way), ``vae_overrides``; ``model`` ("Refined-DiT-B/L/XL" or "DiT-XL/1") with
    ``depth`` / ``hidden_size`` / ``num_heads`` overrides; ``class_dropout_prob`` 0.1.

    Losses (``losses.speeddiff_loss``): weights of Tab. 14 (``mse_weight`` … ``lecam_weight``; LeCam EMA
    ``lecam_decay``); ``time_sampler`` "logit_normal" (B: log-norm(0, 1)) or "uniform" (L / XL);
    ``repa_pp`` adds REPA++ with the frozen ``vfm`` (default: DINOv2-B/14 through timm at ``vfm_resolution``)
    at denoiser depth ``repa_depth`` (8), adapters of width ``adapter_dim``. ``lpips`` (default: the lpips
    package VGG16, full resolution), ``discriminator`` (default: PatchGAN with spectral norm) and ``vfm`` are
    injectable modules (tiny configs: small random nets; no download).

    Optimisation (``optimizer``; ``GANRecipe``): AdamW 1e-4, β (0.9, 0.999), no weight decay for (φ, ψ, θ, ω);
    the discriminator's AdamW uses ``discriminator_lr`` / ``discriminator_betas`` (the paper names none: default the
    main ones); ``grad_clip`` clips each optimizer's gradient norm.

    Sampling (``sampling``; A.3, Tab. 14): Euler–Maruyama with 250 steps, CFG ``guidance_scale`` /
    ``guidance_interval``, or autoguidance when ``self.autoguide`` is set.
    """

    weight_loading_args = ("frozen_vae",)

    @classmethod
    def sampling_overrides(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Sampling needs the VAE and the denoiser only: no LPIPS, discriminator, REPA++ or frozen-VAE file (the
        VAE's weights, trained or frozen, are in the checkpoint)."""
        return {**super().sampling_overrides(hparams), "lpips": None, "discriminator": None, "vfm": None,
                "lpips_weight": 0.0, "tpr_lpips_weight": 0.0, "gan_weight": 0.0, "repa_pp": False}

    def __init__(
        self,
        vae: str = "B",
        resolution: int = 256,
        vae_overrides: dict[str, Any] | None = None,
        model: str = "Refined-DiT-B",
        depth: int | None = None,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        time_sampler: Literal["logit_normal", "uniform"] = "logit_normal",
        mse_weight: float = 1.0,
        lpips_weight: float = 1.0,
        gan_weight: float = 0.1,
        kl_weight: float = 1e-5,
        diffusion_weight: float = 1.0,
        tpr_mse_weight: float = 1.0,
        tpr_lpips_weight: float = 1.0,
        lecam_weight: float = 0.05,
        lecam_decay: float = 0.999,
        disc_loss: str = "hinge",
        gen_loss: str = "vanilla",
        repa_pp: bool = False,
        repa_latent_weight: float = 1.0,
        repa_diffusion_weight: float = 1.0,
        repa_depth: int = DIFFUSION_REPA_DEPTH,
        adapter_dim: int = 2048,
        vfm_resolution: int = 224,
        lpips: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        vfm: nn.Module | None = None,
        frozen_vae: str | None = None,
        sampling: SamplingConfig = SamplingConfig(sampler=EulerMaruyama(), num_steps=250),
        optimizer: OptimizerConfig = OptimizerConfig(lr=1e-4),
        sharding: ShardingConfig = ShardingConfig(),
        nonfinite: NonFiniteConfig = NonFiniteConfig(),
        compile: CompileConfig = CompileConfig(),  # noqa: A002
    ) -> None:
        super().__init__(optimizer, sharding, nonfinite, sampling, compile=compile)
        self.save_hyperparameters(ignore=["lpips", "discriminator", "vfm"])
        self.weights = SpeedDiffWeights(mse_weight, lpips_weight, gan_weight, kl_weight, diffusion_weight,
                                        tpr_mse_weight, tpr_lpips_weight, lecam_weight)
        self.train_vae = frozen_vae is None
        self.tokenizer = load_speeddiff_vae(frozen_vae) if frozen_vae is not None else \
            speeddiff_vae(vae, resolution, vae_overrides)
        if getattr(self.tokenizer, "scaling_factor", 1.0) != 1.0:
            raise ValueError("SpeedDiff diffuses raw VAE latents: set the VAE's scaling_factor to 1")
        self.net = speeddiff_denoiser(self.hparams, self.latent_shape)
        self.resolution = resolution
        self.time_sampler = TimeSampler(time_sampler)
        needs_lpips = (self.train_vae and lpips_weight > 0) or tpr_lpips_weight > 0
        if needs_lpips and lpips is None:
            lpips = LPIPS()  # lpips package VGG16 + v0.1 heads, full resolution (A.2.2)
        self.lpips = lpips if needs_lpips else None
        needs_disc = self.train_vae and gan_weight > 0
        if needs_disc and discriminator is None:
            discriminator = PatchGANDiscriminator()
        self.discriminator = discriminator if needs_disc else None
        self.lecam = LeCamRegularizer(lecam_decay) if needs_disc and lecam_weight > 0 else None
        self.d_loss_fn, self.g_loss_fn = select_gan_losses(disc_loss, gen_loss)
        self.repa_depth = repa_depth
        self.repa = None
        self.vfm = None
        if repa_pp:
            if not 1 <= repa_depth <= self.net.cfg.depth:
                raise ValueError(f"repa_depth {repa_depth} is not a block of the {self.net.cfg.depth}-block denoiser")
            if vfm is None:
                vfm = DINOv2Targets(resolution=vfm_resolution)  # DINOv2-B/14 through timm (pretrained)
            self.vfm = vfm
            target_dim = int(getattr(vfm, "embed_dim", 0) or 0)
            if target_dim <= 0:
                raise ValueError("the REPA++ vfm must expose `embed_dim` (its token width)")
            self.repa = REPAPlusPlus(self.latent_shape[0], self.net.cfg.hidden_size, target_dim, adapter_dim,
                                     repa_latent_weight, repa_diffusion_weight)
        self._reconstruction: Tensor | None = None  # sg(x̂_vae) of the joint step, reused by the discriminator step
        self.strict_loading = False  # LPIPS / VFM tensors are left out of checkpoints (on_save_checkpoint)
        self.freeze()

    # ---------------------------------------------------------------- structure
    @property
    def vae(self) -> nn.Module:
        return self.tokenizer

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.tokenizer.latent_shape)

    @classmethod
    def net_from_hparams(cls, hparams: Mapping[str, Any]) -> nn.Module:
        """Only the denoiser (the autoguidance guide): no VAE, LPIPS, VFM or weight files."""
        return speeddiff_denoiser(cls.with_defaults(hparams), cls._latent_shape_of(hparams))

    @staticmethod
    def _latent_shape_of(hparams: Mapping[str, Any]) -> tuple[int, int, int]:
        """Latent shape a run with these hyper-parameters diffuses on (built on the meta device: no memory)."""
        if hparams.get("frozen_vae"):
            hparams = read_checkpoint(hparams["frozen_vae"], "frozen_vae checkpoint").get("hyper_parameters") or {}
        with torch.device("meta"):
            return tuple(speeddiff_vae(**{k: hparams[k] for k in VAE_ARGS if k in hparams}).latent_shape)

    def frozen_modules(self) -> list[nn.Module]:
        frozen = [m for m in (self.lpips, self.vfm) if m is not None]
        return frozen + ([] if self.train_vae else [self.tokenizer])

    def expected_image_shape(self) -> tuple[int, int, int] | None:
        return (3, self.resolution, self.resolution)

    def shard_units(self) -> list[nn.Module]:
        """One FSDP unit per denoiser block, per ViT-VAE encoder / decoder block, then the encoder and decoder."""
        units = super().shard_units()
        if self.train_vae:
            if isinstance(self.tokenizer, ViTVAE):
                units += list(self.tokenizer.encoder.trunk.blocks) + list(self.tokenizer.decoder.trunk.blocks)
            units += [self.tokenizer.encoder, self.tokenizer.decoder]
        return units

    def compiled_modules(self) -> list[nn.Module]:
        """The denoiser, the VAE's encoder and decoder (trained jointly, so compiled with the denoiser) and the
        frozen modules (``compile`` group; the discriminator's spectral norm stays eager)."""
        vae = compiled_parts(self.tokenizer) if self.train_vae else []
        return [self.net, *vae, *self.compiled_frozen_modules()]

    def reshard_root_after_forward(self, root: nn.Module) -> bool:
        return root is not self.tokenizer  # posterior() returns a distribution object FSDP cannot hook

    def shard_roots(self) -> list[nn.Module]:
        """The denoiser, and when trained the VAE, the REPA++ adapters and the discriminator (its own optimizer)."""
        roots = [self.net]
        if self.train_vae:
            roots.append(self.tokenizer)
        return roots + [m for m in (self.repa, self.discriminator) if m is not None]

    def configure_model(self) -> None:
        """The base's compile and FSDP2 (``shard_units`` / ``shard_roots``); under FSDP2 the VAE is called through
        ``posterior`` and ``decode``, not ``forward``, so those methods get FSDP's unshard / reshard hooks too."""
        mesh = self.device_mesh
        if mesh is None:
            super().configure_model()  # one device / DDP: the compile group
            return
        from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

        fresh = not isinstance(self.net, FSDPModule)
        super().configure_model()
        if fresh and self.train_vae:
            for method in ("posterior", "decode"):
                register_fsdp_forward_method(self.tokenizer, method)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Frozen pretrained modules (LPIPS, VFM) are rebuilt from the arguments, not saved — except in a sharded
        (distributed) checkpoint, whose loader requires every key of the module."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and self.device_mesh is None:
            for key in [k for k in state if k.startswith(("lpips.", "vfm."))]:
                del state[key]

    # ---------------------------------------------------------------- losses
    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images → posterior means (the latent the denoiser was trained on, without the sampling noise)."""
        return self.tokenizer.encode(images, sample=False)

    def _vfm_tokens(self, images: Tensor) -> Tensor | None:
        if self.repa is None:
            return None
        with torch.no_grad():
            return self.vfm(images)

    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Algorithm 1's L (and every term) with the discriminator in eval mode (no power iteration)."""
        images = batch["image"]
        if self.discriminator is not None:
            self.discriminator.eval()
        out = speeddiff_generator_losses(
            self.tokenizer, self.net, images, batch["label"], self.time_sampler, self.weights, self.train_vae,
            self.lpips, self.discriminator, self.g_loss_fn, self.repa, self._vfm_tokens(images), self.repa_depth,
            self.gan_phase, generator=generator)
        self._reconstruction = out.reconstruction
        return out.losses

    def discriminator_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """The discriminator's hinge + LeCam losses on sg(x̂_vae) of this step's joint update (Algorithm 1)."""
        if self._reconstruction is None:
            return None
        self.discriminator.train()
        return speeddiff_discriminator_losses(self.discriminator, batch["image"], self._reconstruction, self.lecam,
                                              self.weights.lecam, self.d_loss_fn)

    def end_of_step(self) -> None:
        self._reconstruction = None

    # ---------------------------------------------------------------- sampling
    def noise_shape(self) -> tuple[int, int, int]:
        return self.latent_shape

    def generate(self, labels: Tensor, noise: Tensor, options: SamplingConfig, generator: torch.Generator | None,
                 progress: bool, return_latents: bool = False) -> Tensor:
        """A.3: the flow sampler on the latent, decoded by the VAE decoder to images in [−1, 1] (``return_latents``:
        the latents). Guidance: autoguidance when ``self.autoguide`` is set (A.3.1; same labels, interval on t),
        else CFG; the null label ``num_classes`` samples unconditionally (A.3.2)."""
        denoiser = self.flow_guidance(options.guidance_scale, options.guidance_interval)
        z0 = options.sampler.sample(denoiser.with_labels(labels), noise, options.num_steps, generator=generator,
                                    progress=progress)
        if return_latents:
            return z0
        with eval_mode(self.tokenizer):
            return self.tokenizer.decode(z0).clamp(-1, 1)


__all__ = ["SpeedDiff", "load_speeddiff_vae", "speeddiff_denoiser", "speeddiff_vae"]
