"""RAE recipes: `RAEStage1` trains the ViT decoder of a frozen representation encoder, `RAEStage2` trains DiT^DH
on the encoder's normalised latents ("Diffusion Transformers with Representation Autoencoders").

Stage 1 (RAE Sec. 3-4, App. E Table 12; reference/rae_stage1/README "Stage-1 training recipe"):

    x ─frozen encoder E (+ noise z + σ·n, Sec. 4.3)─▶ z ─decoder D─▶ x̂
    L_G = ‖x̂ − x‖₁ + ω_L·LPIPS(x̂, x) + ω_G·λ·(−D_disc(DiffAug(x̂)))     λ = ‖∇L_rec‖ / (‖∇L_G‖ + ε) on D's last layer
    L_D = hinge(D_disc(DiffAug(x)), D_disc(DiffAug(q8(x̂_eval))))       (frozen DINO-S/8 + trainable heads)

with ω_L = 1, ω_G = 0.75, Adam β (0.5, 0.9), cosine LR 2e-4 → 2e-5 after a one-epoch warm-up for both the
decoder and the discriminator; LPIPS from epoch 0, discriminator updates from epoch 6, adversarial loss from
epoch 8 — the recipe reads ``self.gan_phase`` every step and ``callbacks.GANWarmup`` sets it. Manual
optimisation: one decoder step, then (when the discriminator is on) one discriminator step on 8-bit
quantised eval-mode reconstructions, as the official ``train_stage1.py``. ``predict`` encodes images to raw
latents (``callbacks.LatentWriter`` caches them) and, with ``stats_output``, saves the per-element dataset
mean / variance that stage 2 normalises with (official ``calculate_stat.py`` output format).

Stage 2 (RAE Sec. 4-5, App. F, I): linear flow on the normalised latents, velocity target, logit-normal
times shifted by α = sqrt(C·H·W / 4096) (Sec. 4.2), DiT^DH (or LightningDiT); sampling with the Euler ODE
(50 steps) or Euler–Maruyama, CFG with an interval or autoguidance (``self.autoguide``), decoding through
the stage-1 decoder (a ``RAEStage1`` checkpoint or the official decoder + statistics) to images in [−1, 1].
"""
from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.diffusion import RAETransport, euler_ode_sample, rae_shift
from speedrun_diffusion.lightning_modules.losses.diffaug import DiffAug
from speedrun_diffusion.lightning_modules.losses.gan import GANPhase, adaptive_weight, disc_accuracy, quantize_fake, select_gan_losses
from speedrun_diffusion.lightning_modules.losses.rae_transport import rae_transport_loss
from speedrun_diffusion.lightning_modules.networks.ddt_head import DDTHeadConfig
from speedrun_diffusion.lightning_modules.networks.dit import DiT, lightningdit_preset
from speedrun_diffusion.lightning_modules.networks.ditdh import DiTDH, DiTDHConfig, ditdh_preset
from speedrun_diffusion.lightning_modules.checkpoints.rae_stage1 import build_rae
from speedrun_diffusion.lightning_modules.networks.rae import RAE
from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder, rae_decoder_preset
from speedrun_diffusion.lightning_modules.networks.rae_encoder import RepresentationEncoder, representation_encoder_preset
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe, LRSchedule, NonFinitePolicy, warmup_schedule_factor
from speedrun_diffusion.lightning_modules.weights import ema_weights, load_exact, read_checkpoint, recipe_of, weights_under

log = logging.getLogger(__name__)

SigmaDist = Literal["uniform", "half_normal"]
Stage2Schedule = Literal["hold_linear", "constant", "cosine"]


# ----------------------------------------------------------------------------------------------- builders


def rae_tokenizer(
    encoder: str = "dinov2",
    decoder: str = "XL",
    encoder_input_size: int = 224,
    decoder_patch_size: int = 16,
    noise_tau: float = 0.0,
    sigma_dist: SigmaDist = "uniform",
    pretrained_encoder: str | None = None,
    decoder_path: str | None = None,
    stats_path: str | None = None,
    encoder_overrides: Mapping[str, Any] | None = None,
    decoder_overrides: Mapping[str, Any] | None = None,
) -> RAE:
    """The RAE (RAE Sec. 3): ``networks.rae.build_rae`` for the official encoders / decoders, or a custom
    (random) one whose encoder / decoder config fields are replaced by ``encoder_overrides`` /
    ``decoder_overrides`` (tiny CPU configs: a small DINOv2-architecture encoder and decoder)."""
    if not encoder_overrides and not decoder_overrides:
        return build_rae(encoder, decoder, encoder_input_size, decoder_patch_size, noise_tau, pretrained_encoder,
                         decoder_path, stats_path, sigma_dist)
    if pretrained_encoder is not None or decoder_path is not None:
        raise ValueError("encoder_overrides / decoder_overrides build a custom RAE with random weights: leave "
                         "pretrained_encoder and decoder_path unset")
    enc = RepresentationEncoder(representation_encoder_preset(encoder, **dict(encoder_overrides or {})))
    grid = enc.grid_size(encoder_input_size)
    dec = RAEDecoder(rae_decoder_preset(decoder, latent_dim=enc.cfg.hidden_size, patch_size=decoder_patch_size,
                                        num_patches=grid * grid, **dict(decoder_overrides or {})))
    rae = RAE(enc, dec, encoder_input_size, noise_tau=noise_tau, sigma_dist=sigma_dist)
    if stats_path is not None:
        rae.load_latent_stats(stats_path)
    return rae


# RAEStage1 init args that define the tokenizer's architecture (rebuilt from a stage-1 checkpoint)
TOKENIZER_ARGS = ("encoder", "decoder", "encoder_input_size", "decoder_patch_size", "sigma_dist",
                  "encoder_overrides", "decoder_overrides")


def load_stage1_tokenizer(path: str | Path, weights: Literal["ema", "model"] = "ema",
                          stats_path: str | Path | None = None) -> RAE:
    """The frozen RAE (encoder + trained decoder) of a ``RAEStage1`` checkpoint, in eval mode, no noise.

    The architecture comes from the checkpoint's hyper-parameters, the weights from its ``tokenizer.*``
    tensors; ``weights="ema"`` takes the decoder from the EMA shadow when the run had ``callbacks.EMA``
    (official stage 2 samples with the EMA decoder). ``stats_path``: latent statistics (``{'mean', 'var'}``).
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"stage1_weights must be 'ema' or 'model', got {weights!r}")
    checkpoint = read_checkpoint(path, "stage1_checkpoint")
    recipe = recipe_of(checkpoint)
    if recipe is not None and recipe != RAEStage1.recipe_name():
        raise ValueError(f"stage1_checkpoint {path} was written by {recipe}, not {RAEStage1.recipe_name()}")
    hparams = checkpoint.get("hyper_parameters") or {}
    missing = [k for k in ("encoder", "decoder") if k not in hparams]
    if missing:
        raise ValueError(f"stage1_checkpoint {path} has no hyper-parameters {missing}: not a RAEStage1 checkpoint")
    rae = rae_tokenizer(**{k: hparams[k] for k in TOKENIZER_ARGS if k in hparams})
    load_exact(rae, weights_under(checkpoint["state_dict"], "tokenizer."),
               f"stage1_checkpoint {path} (the tokenizer its hyper-parameters describe)")
    shadow = ema_weights(checkpoint) if weights == "ema" else None
    if weights == "ema" and shadow is None:
        log.warning("stage1_checkpoint %s holds no EMA weights: using the raw decoder", path)
    if shadow is not None:
        rae.decoder.load_state_dict({**rae.decoder.state_dict(), **shadow}, strict=True)
    if stats_path is not None:
        rae.load_latent_stats(stats_path)
    rae.noise_tau = 0.0  # stage 2 encodes without noise (official noise_tau: 0)
    return rae.requires_grad_(False).eval()


def rae_denoiser(
    model: str = "DiTDH-XL",
    head: str = "G",
    head_depth: int = 2,
    head_hidden_size: int | None = None,
    head_num_heads: int | None = None,
    input_size: int = 16,
    in_channels: int = 768,
    num_classes: int = 1000,
    class_dropout_prob: float = 0.1,
    depth: int | None = None,
    hidden_size: int | None = None,
    num_heads: int | None = None,
    qk_norm: bool = False,
) -> nn.Module:
    """DiT^DH ("DiTDH-S|B|L|XL", head ``head`` of Table 16 × ``head_depth``, or an explicit head width / heads)
    or LightningDiT ("LightningDiT-XL/1") on (in_channels, input_size, input_size) latents (RAE Sec. 5, App. F).

    ``depth`` / ``hidden_size`` / ``num_heads`` override the backbone preset. The width rule of RAE Sec. 4.1
    (DiT^DH head / LightningDiT width ≥ token dimension C·p²) raises a ValueError naming the key.
    """
    sizes = {k: v for k, v in dict(depth=depth, hidden_size=hidden_size, num_heads=num_heads).items() if v is not None}
    common = dict(input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                  class_dropout_prob=class_dropout_prob, qk_norm=qk_norm, **sizes)
    if model.startswith("LightningDiT"):
        return DiT(lightningdit_preset(model, **common))
    custom_head = head_hidden_size is not None or head_num_heads is not None
    cfg = ditdh_preset(model, head=head, head_depth=head_depth, check_width=not custom_head, **common)
    if custom_head:
        cfg = DiTDHConfig(cfg.backbone, DDTHeadConfig(head_hidden_size or cfg.head.hidden_size, head_depth,
                                                      head_num_heads or cfg.head.num_heads))
    return DiTDH(cfg)


def hold_linear_factor(step: int, hold_steps: int, end_steps: int, min_lr_ratio: float, warmup_steps: int = 0) -> float:
    """LR multiplier of RAE App. F for DiT^DH: constant for ``hold_steps`` (40 epochs), then linear to
    ``min_lr_ratio`` (2e-5 / 2e-4) at ``end_steps`` (800 epochs), constant after (official ``linear`` schedule
    with ``warmup_from_zero: false``); an optional linear warm-up from zero over ``warmup_steps`` first."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if step < hold_steps:
        return 1.0
    if end_steps <= hold_steps:
        return min_lr_ratio
    progress = min(1.0, (step - hold_steps) / (end_steps - hold_steps))
    return 1.0 + (min_lr_ratio - 1.0) * progress


def _steps_per_epoch(recipe: DiffusionRecipe) -> int:
    """Optimizer steps in one training epoch (``trainer.num_training_batches`` / gradient accumulation)."""
    trainer = recipe.trainer
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()  # as estimated_stepping_batches does (it skips this when max_epochs is -1)
    batches = trainer.num_training_batches
    if not math.isfinite(batches):
        raise ValueError("epoch-based LR settings need a sized training loader: give the schedule in steps")
    return max(1, int(batches) // max(1, trainer.accumulate_grad_batches))


# ----------------------------------------------------------------------------------------------- stage 1


class RAEStage1(DiffusionRecipe):
    """RAE stage 1: frozen encoder, trained ViT decoder with L1 + LPIPS + GAN (RAE Sec. 4.3, App. E).

    Tokenizer (``self.tokenizer``, an ``networks.RAE``): ``encoder`` family ("dinov2", "siglip2", "mae") and
    ``decoder`` size ("B", "L", "XL") as the official configs, ``encoder_input_size`` (224 for 256 px with
    DINOv2), ``decoder_patch_size`` p_d (16; 32 = decoder upsampling 256 → 512, Sec. 6.1);
    ``pretrained_encoder``: "timm" (timm's pretrained weights), a local HF folder, or None (random);
    ``decoder_path``: an official decoder ``model.pt`` to start from; ``encoder_overrides`` /
    ``decoder_overrides``: config fields of a custom (tiny, random) encoder / decoder. Noise augmentation
    z + σ·n with τ = ``noise_tau`` (0.8) and σ ~ U[0, τ) (official) or |N(0, τ²)| (paper: ``half_normal``).

    Losses: ``lpips`` (default: the ``lpips`` package VGG16 with its v0.1 heads) and ``discriminator``
    (default: ``DinoDiscriminator("S_8")`` with the DINO ViT-S/8 weights at ``disc_backbone``) are injectable
    modules; ``train_losses=False`` builds neither (predict-only runs: latent caching / statistics).
    Weights ω_L = ``perceptual_weight``, ω_G = ``disc_weight``; λ clamped to ``max_d_weight``.

    Optimisation (manual, two optimizers): AdamW (Adam at weight decay 0) with ``betas``; LR linear warm-up
    over ``warmup_epochs`` (or ``warmup_steps``), then cosine to ``min_lr`` at the end of training, stepped
    per decoder step; the discriminator's schedule (same settings, ``disc_lr`` if given) steps only on its
    updates, as the official code. ``grad_clip`` clips each optimizer's gradient norm (Lightning's
    ``gradient_clip_val`` is unavailable under manual optimisation; official: no clipping).
    ``trainer.global_step`` counts decoder steps (the discriminator update does not advance it).
    """

    def __init__(
        self,
        encoder: str = "dinov2",
        decoder: str = "XL",
        encoder_input_size: int = 224,
        decoder_patch_size: int = 16,
        pretrained_encoder: str | None = "timm",
        decoder_path: str | None = None,
        encoder_overrides: dict[str, Any] | None = None,
        decoder_overrides: dict[str, Any] | None = None,
        noise_tau: float = 0.8,
        sigma_dist: SigmaDist = "uniform",
        train_losses: bool = True,
        lpips: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        disc_backbone: str | None = None,
        perceptual_weight: float = 1.0,
        disc_weight: float = 0.75,
        max_d_weight: float = 1e4,
        disc_loss: str = "hinge",
        gen_loss: str = "vanilla",
        diffaug_prob: float = 1.0,
        diffaug_cutout: float = 0.0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        adam_eps: float = 1e-8,
        warmup_epochs: float | None = 1.0,
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "cosine",
        min_lr: float = 2e-5,
        disc_lr: float | None = None,
        grad_clip: float | None = None,
        stats_output: str | None = None,
        num_classes: int = 1000,
        fsdp_param_dtype: Literal["float32", "bfloat16"] | None = None,
        nonfinite: NonFinitePolicy = "skip",
    ) -> None:
        super().__init__(lr=lr, betas=betas, weight_decay=weight_decay, adam_eps=adam_eps, warmup_steps=warmup_steps,
                         lr_schedule=lr_schedule, min_lr=min_lr, fsdp_param_dtype=fsdp_param_dtype, nonfinite=nonfinite)
        # stats_output is where a predict run writes, not part of the model: a --ckpt_path must not override it
        self.save_hyperparameters(ignore=["lpips", "discriminator", "stats_output"])
        self.automatic_optimization = False
        for name, value in (("perceptual_weight", perceptual_weight), ("disc_weight", disc_weight),
                            ("max_d_weight", max_d_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {grad_clip}")
        self.tokenizer = rae_tokenizer(encoder, decoder, encoder_input_size, decoder_patch_size, noise_tau, sigma_dist,
                                       pretrained_encoder, decoder_path, None, encoder_overrides, decoder_overrides)
        self.tokenizer_name = f"RAE-{encoder}"
        if train_losses and lpips is None:
            from speedrun_diffusion.lightning_modules.losses.lpips import LPIPS

            lpips = LPIPS()  # lpips package VGG16 + v0.1 heads (torchvision ImageNet weights)
        if train_losses and discriminator is None:
            from speedrun_diffusion.lightning_modules.networks.discriminators import DinoDiscriminator

            discriminator = DinoDiscriminator("S_8", backbone_checkpoint=disc_backbone)
        self.lpips = lpips if train_losses else None
        self.discriminator = discriminator if train_losses else None
        self.d_loss_fn, self.g_loss_fn = select_gan_losses(disc_loss, gen_loss)
        self.diffaug = DiffAug(diffaug_prob, diffaug_cutout)
        self.perceptual_weight = perceptual_weight
        self.disc_weight = disc_weight
        self.max_d_weight = max_d_weight
        self.warmup_epochs = warmup_epochs
        self.disc_lr = disc_lr
        self.grad_clip = grad_clip
        self.stats_output = stats_output
        self._num_classes = num_classes
        self.gan_phase = GANPhase()  # all on unless callbacks.GANWarmup switches terms off
        self.freeze()
        self._preview: Tensor | None = None  # fixed images LogSamples reconstructs
        self._stats: list[Tensor] | None = None

    @property
    def net(self) -> RAEDecoder:  # type: ignore[override]
        """The trained network: the decoder (EMA and sample grids follow it; DESIGN ``net`` contract)."""
        return self.tokenizer.decoder

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def frozen_modules(self) -> list[nn.Module]:
        return [m for m in (self.tokenizer.encoder, self.lpips) if m is not None]

    def configure_model(self) -> None:
        """Not sharded: the adaptive weight differentiates one decoder weight and two optimizers train the decoder
        and the discriminator heads; the ViT-XL decoder (415M) fits one GPU, so stage 1 runs data parallel."""
        if self.device_mesh is not None:
            raise ValueError("RAEStage1 trains the decoder and the discriminator heads without sharding: use data "
                             "parallelism (trainer.strategy: ddp, configs/scale/ddp_8gpu.yaml), not "
                             "ModelParallelStrategy / FSDP2 (fsdp_param_dtype is accepted only so add-ons compose)")

    # ---------------------------------------------------------------- losses
    def reconstruct(self, images: Tensor) -> Tensor:
        """D(E(x) [+ noise in training mode]) in [0, 1] pixel space (official ``rae(x)``); x in [−1, 1]."""
        return self.tokenizer.decode_unit_range(self.tokenizer.encode_unit_range((images + 1) / 2))

    def generator_losses(self, images: Tensor, phase: GANPhase | None = None) -> dict[str, Tensor]:
        """Decoder objective (RAE App. E "Losses"): L1 in [0, 1], + ω_L·LPIPS, + ω_G·λ·L_G once adversarial.

        The discriminator runs in eval mode here (no spectral-norm power iteration), on DiffAug(x̂)."""
        phase = phase or self.gan_phase
        recon = self.reconstruct(images)
        x01 = (images + 1) / 2
        losses = {"l1": (recon - x01).abs().mean()}
        rec = losses["l1"]
        if phase.lpips and self.lpips is not None and self.perceptual_weight > 0:
            losses["lpips"] = self.lpips(images, recon * 2 - 1)
            rec = rec + self.perceptual_weight * losses["lpips"]
        losses["rec"] = rec
        total = rec
        if phase.adversarial and self.discriminator is not None and self.disc_weight > 0:
            self.discriminator.eval()
            logits = self.discriminator(self.diffaug(recon * 2 - 1))
            losses["gan"] = self.g_loss_fn(logits)
            if torch.is_grad_enabled():
                lam = adaptive_weight(rec, losses["gan"], self.net.last_layer, self.max_d_weight)
                losses.update(adaptive_weight=lam.weight, rec_grad_norm=lam.rec_grad_norm, gan_grad_norm=lam.gan_grad_norm)
                total = rec + self.disc_weight * lam.weight * losses["gan"]
        losses["loss"] = total
        return losses

    def discriminator_losses(self, images: Tensor) -> dict[str, Tensor]:
        """Hinge loss on DiffAug of 8-bit quantised eval-mode reconstructions vs real images, fake first
        (reference/rae_stage1/README "Discriminator step"), discriminator in train mode."""
        was_training = self.tokenizer.training
        self.tokenizer.eval()  # no noise for the fakes
        with torch.no_grad():
            fake = quantize_fake(self.reconstruct(images))
        self.tokenizer.train(was_training)
        self.discriminator.train()
        logits_fake = self.discriminator(self.diffaug(fake))
        logits_real = self.discriminator(self.diffaug(images))
        return {"d_loss": self.d_loss_fn(logits_real, logits_fake),
                "disc_accuracy": disc_accuracy(logits_real.detach(), logits_fake.detach()),
                "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}

    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return self.generator_losses(batch["image"])

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        images = batch["image"]
        if self._preview is None:
            self._preview = images[:16].detach().clone()
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        phase = self.gan_phase
        if self.discriminator is not None:
            self.discriminator.zero_grad(set_to_none=True)  # the decoder step must not leave gradients in D
        losses = self.generator_losses(images, phase)
        finite = self.losses_are_finite(losses)
        self.manual_optimizer_step(optimizers[0], losses["loss"] if finite else None, True, self.grad_clip)
        schedulers[0].step()
        self.log_losses(losses, "train", batch_size=len(images))
        if phase.disc and self.discriminator is not None:
            d = self.discriminator_losses(images)
            finite = self.losses_are_finite(d)
            self.manual_optimizer_step(optimizers[1], d["d_loss"] if finite else None, False, self.grad_clip)
            schedulers[1].step()
            self.log_dict({f"train/{k}": v.detach().float() for k, v in d.items()}, batch_size=len(images))

    def configure_optimizers(self) -> tuple[list, list]:
        """Decoder and discriminator AdamW with warm-up + cosine (RAE Table 12); schedules stepped by hand."""
        decoder_params = [p for p in self.tokenizer.decoder.parameters() if p.requires_grad]
        optimizers = [torch.optim.AdamW(decoder_params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay,
                                        eps=self.adam_eps)]
        if self.discriminator is not None:
            optimizers.append(torch.optim.AdamW([p for p in self.discriminator.parameters() if p.requires_grad],
                                                lr=self.disc_lr or self.lr, betas=self.betas,
                                                weight_decay=self.weight_decay, eps=self.adam_eps))
        warmup, total = self.warmup_steps, None
        if self._trainer is not None:
            total = int(self.trainer.estimated_stepping_batches)
            if self.warmup_epochs is not None:
                warmup = int(round(self.warmup_epochs * _steps_per_epoch(self)))
        schedulers = []
        for opt in optimizers:
            ratio = self.min_lr / opt.param_groups[0]["lr"] if opt.param_groups[0]["lr"] > 0 else 0.0
            fn = lambda s, r=ratio: warmup_schedule_factor(s, warmup, total, self.lr_schedule, r)  # noqa: E731
            schedulers.append({"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, fn), "interval": "step"})
        return optimizers, schedulers

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Eval-mode reconstruction (no noise): L1, LPIPS and PSNR (on [0, 1] images)."""
        images = batch["image"]
        if self._preview is None:
            self._preview = images[:16].detach().clone()
        recon = self.reconstruct(images)
        x01 = (images + 1) / 2
        metrics = {"l1": (recon - x01).abs().mean()}
        mse = (recon.clamp(0, 1) - x01).square().flatten(1).mean(1)
        metrics["psnr"] = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
        loss = metrics["l1"]
        if self.lpips is not None:
            metrics["lpips"] = self.lpips(images, recon * 2 - 1)
            loss = loss + self.perceptual_weight * metrics["lpips"]
        metrics["loss"] = loss
        self.log_losses(metrics, "val", batch_size=len(images))
        return loss

    # ---------------------------------------------------------------- reconstructions (LogSamples)
    @torch.no_grad()
    def sample(self, labels: Tensor, images: Tensor | None = None, with_inputs: bool = False, **_: Any) -> Tensor:
        """Eval-mode reconstructions in [−1, 1] of ``images`` (default: the first training / validation images
        seen), one per label; ``with_inputs`` interleaves input and reconstruction (2·len(labels) images)."""
        if images is None:
            if self._preview is None:
                raise RuntimeError("RAEStage1.sample reconstructs images: pass images= or run a training / "
                                   "validation batch first")
            index = torch.arange(len(labels)) % len(self._preview)
            images = self._preview[index]
        images = images.to(self.device)
        was_training = self.tokenizer.training
        self.tokenizer.eval()
        try:
            recon = (self.reconstruct(images) * 2 - 1).clamp(-1, 1)
        finally:
            self.tokenizer.train(was_training)
        if not with_inputs:
            return recon
        return torch.stack([images.clamp(-1, 1), recon], dim=1).flatten(0, 1)

    # ---------------------------------------------------------------- predict: latents + statistics
    def on_predict_start(self) -> None:
        self._stats = None

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Raw (un-normalised) eval-mode latents ``{"latent", "label"}`` for ``callbacks.LatentWriter``; with
        ``stats_output`` also accumulates the per-element sums for the dataset statistics."""
        latent = self.tokenizer.encode(batch["image"]).float()
        if self.stats_output is not None:
            z = latent.double()
            sums = [z.sum(0), z.square().sum(0), torch.tensor(float(len(z)), dtype=torch.float64, device=z.device)]
            self._stats = sums if self._stats is None else [a + b for a, b in zip(self._stats, sums)]
        return {"latent": latent, "label": batch["label"]}

    def on_predict_end(self) -> None:
        """Save ``{'mean', 'var'}`` (C, h, w): the exact per-element mean and population variance over every
        predicted image of every rank (official ``calculate_stat.py`` format; it uses a BatchNorm-style running
        average with momentum 0.1 instead, which weights the last batches most)."""
        if self.stats_output is None or self._stats is None:
            return
        total, squares, count = (self.trainer.strategy.reduce(t, reduce_op="sum") for t in self._stats)
        mean = total / count
        var = (squares / count - mean.square()).clamp_min(0.0)
        if self.trainer.is_global_zero:
            path = Path(self.stats_output)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"mean": mean.float().cpu(), "var": var.float().cpu()}, path)
            log.info("RAEStage1: latent statistics of %d images written to %s", int(count), path)
        self._stats = None


# ----------------------------------------------------------------------------------------------- stage 2


class RAEStage2(DiffusionRecipe):
    """RAE stage 2: DiT^DH (or LightningDiT) flow matching on normalised RAE latents (RAE Sec. 4-5, App. F).

    Network: ``rae_denoiser`` args (``model`` "DiTDH-XL" | ... | "LightningDiT-XL/1", DDT ``head`` /
    ``head_depth`` or ``head_hidden_size`` / ``head_num_heads``, ``depth`` / ``hidden_size`` / ``num_heads``
    overrides) on (``in_channels``, ``input_size``, ``input_size``) latents.

    Process: ``time_dist`` "logit_normal" (``time_mean``, ``time_std``) or "uniform" on [0, 0.999], shift
    α = sqrt(C·H·W / ``shift_base``) (``time_shift`` overrides it) in training and sampling; ``sampler``
    "ode" (Euler, ``num_sample_steps`` = 50) or "sde" (Euler–Maruyama); ``official_sampler`` replays the
    official grids (ODE ending at shift(0.001)). Guidance: CFG ``cfg_scale`` on the closed t-interval
    ``cfg_interval`` (1.0 = none, as the official non-AG configs), or autoguidance when ``self.autoguide`` is
    set (``callbacks.AutoGuidance``). ``unconditional`` trains and samples with the null label only (App. K).

    Tokenizer (frozen, kept out of checkpoints — it is rebuilt from these arguments): ``tokenizer`` (a module)
    or ``stage1_checkpoint`` (a ``RAEStage1`` checkpoint; ``stage1_weights`` "ema" / "model") or, with
    ``official_rae``, ``networks.rae.build_rae(rae_encoder, rae_decoder, encoder_input_size,
    decoder_patch_size, pretrained_encoder, decoder_path)`` — the released decoder ``model.pt``;
    ``stats_path``: the latent ``{'mean', 'var'}`` file (official ``stat.pt`` or ``RAEStage1``'s
    ``stats_output``). Without any tokenizer the latents are used as they come and ``sample`` returns latents.
    Data: ``{"latent"}`` batches (``LatentDataModule``: raw latents, normalised here with the statistics) or
    ``{"image"}`` batches encoded on the fly (the official pipeline, with flips).

    Optimisation: AdamW 2e-4, β (0.9, 0.95), wd 0; ``lr_schedule`` "hold_linear": constant for
    ``lr_hold_epochs`` (40), linear to ``min_lr`` (2e-5) at ``lr_decay_end_epoch`` (800), constant after.
    """

    def __init__(
        self,
        model: str = "DiTDH-XL",
        head: str = "G",
        head_depth: int = 2,
        head_hidden_size: int | None = None,
        head_num_heads: int | None = None,
        input_size: int = 16,
        in_channels: int = 768,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        depth: int | None = None,
        hidden_size: int | None = None,
        num_heads: int | None = None,
        qk_norm: bool = False,
        unconditional: bool = False,
        time_dist: Literal["logit_normal", "uniform"] = "logit_normal",
        time_mean: float = 0.0,
        time_std: float = 1.0,
        shift_base: int = 4096,
        time_shift: float | None = None,
        num_sample_steps: int = 50,
        sampler: Literal["ode", "sde"] = "ode",
        official_sampler: bool = False,
        cfg_scale: float = 1.0,
        cfg_interval: tuple[float, float] = (0.0, 1.0),
        tokenizer: nn.Module | None = None,
        stage1_checkpoint: str | None = None,
        stage1_weights: Literal["ema", "model"] = "ema",
        official_rae: bool = True,
        rae_encoder: str = "dinov2",
        rae_decoder: str = "XL",
        encoder_input_size: int = 224,
        decoder_patch_size: int = 16,
        pretrained_encoder: str | None = "timm",
        decoder_path: str | None = None,
        stats_path: str | None = None,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        adam_eps: float = 1e-8,
        warmup_steps: int = 0,
        lr_schedule: Stage2Schedule = "hold_linear",
        lr_hold_epochs: float = 40.0,
        lr_decay_end_epoch: float = 800.0,
        min_lr: float = 2e-5,
        fsdp_param_dtype: Literal["float32", "bfloat16"] | None = None,
        nonfinite: NonFinitePolicy = "skip",
    ) -> None:
        if lr_schedule not in ("hold_linear", "constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'hold_linear', 'constant' or 'cosine', got {lr_schedule!r}")
        super().__init__(lr=lr, betas=betas, weight_decay=weight_decay, adam_eps=adam_eps, warmup_steps=warmup_steps,
                         lr_schedule="constant" if lr_schedule == "hold_linear" else lr_schedule, min_lr=min_lr,
                         fsdp_param_dtype=fsdp_param_dtype, nonfinite=nonfinite)
        self.save_hyperparameters(ignore=["tokenizer"])
        self.net = rae_denoiser(model, head, head_depth, head_hidden_size, head_num_heads, input_size, in_channels,
                                num_classes, class_dropout_prob, depth, hidden_size, num_heads, qk_norm)
        self.latent_shape = (in_channels, input_size, input_size)
        if time_shift is None and in_channels * input_size**2 < shift_base:
            raise ValueError(f"shift_base={shift_base} exceeds the latent dimension {in_channels * input_size**2}: "
                             "the shift sqrt(C·H·W / shift_base) would be < 1 (the official code rejects it)")
        shift = float(time_shift) if time_shift is not None else rae_shift(self.latent_shape, shift_base)
        self.transport = RAETransport(self.latent_shape, time_dist, time_mean, time_std, 0.999, shift,
                                      num_sample_steps, sampler, official_sampler)
        self.time_sampler = self.transport.time_sampler()
        self.unconditional = unconditional
        self.cfg_scale = cfg_scale
        self.cfg_interval = (float(cfg_interval[0]), float(cfg_interval[1]))
        self.schedule_kind = lr_schedule
        self.lr_hold_epochs = lr_hold_epochs
        self.lr_decay_end_epoch = lr_decay_end_epoch
        if tokenizer is None and stage1_checkpoint is not None:
            tokenizer = load_stage1_tokenizer(stage1_checkpoint, stage1_weights, stats_path)
        elif tokenizer is None and official_rae:
            tokenizer = build_rae(rae_encoder, rae_decoder, encoder_input_size, decoder_patch_size, 0.0,
                                  pretrained_encoder, decoder_path, stats_path)
        elif tokenizer is not None and stats_path is not None:
            tokenizer.load_latent_stats(stats_path)
        if tokenizer is not None and tuple(getattr(tokenizer, "latent_shape", self.latent_shape)) != self.latent_shape:
            raise ValueError(f"the tokenizer makes latents of shape {tuple(tokenizer.latent_shape)} but the network "
                             f"takes {self.latent_shape} (in_channels, input_size, input_size)")
        self.tokenizer = tokenizer
        self.strict_loading = False  # the frozen tokenizer is not saved (rebuilt from the arguments above)
        self.freeze()

    @classmethod
    def net_from_hparams(cls, hparams: Mapping[str, Any]) -> nn.Module:
        """Only the denoiser (the autoguidance guide): no tokenizer, no weight files."""
        accepted = inspect.signature(rae_denoiser).parameters
        return rae_denoiser(**{k: v for k, v in hparams.items() if k in accepted})

    @property
    def shift(self) -> float:
        return self.transport.time_shift

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The frozen tokenizer is left out (rebuilt from the arguments), except in a sharded (distributed)
        checkpoint, whose loader requires every key of the module."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if isinstance(state, dict) and self.device_mesh is None:
            for key in [k for k in state if k.startswith("tokenizer.")]:
                del state[key]

    def on_fit_start(self) -> None:
        """Cached latents must have this network's shape and the writer's scale 1 (RAE latents are unscaled)."""
        super().on_fit_start()
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        manifest = getattr(datamodule, "manifest", None)
        if isinstance(manifest, dict):
            shape = tuple(manifest.get("latent_shape") or ())
            if shape != self.latent_shape:
                raise ValueError(f"the latent cache holds latents of shape {shape} but RAEStage2 takes "
                                 f"{self.latent_shape} (model.init_args.in_channels / input_size)")
            if self.tokenizer is not None and getattr(self.tokenizer, "latent_mean", None) is None:
                log.warning("RAEStage2 trains on cached latents without latent statistics (stats_path): the "
                            "latents are not normalised")

    # ---------------------------------------------------------------- training
    def diffusion_input(self, batch: dict[str, Tensor]) -> Tensor:
        """x0: normalised latents — cached raw ``batch["latent"]`` normalised with the tokenizer's statistics, or
        ``tokenizer.encode(batch["image"])`` (the statistics applied inside)."""
        if "latent" in batch:
            x0 = batch["latent"].float()
            if self.tokenizer is not None:
                x0 = self.tokenizer.normalize_latent(x0)
            source = "batch['latent']"
        elif self.tokenizer is None:
            raise ValueError("RAEStage2 without a tokenizer needs batches of cached latents ('latent')")
        else:
            x0 = self.encode(batch["image"])
            source = "tokenizer.encode(batch['image'])"
        if tuple(x0.shape[1:]) != self.latent_shape:
            raise ValueError(f"{source} has shape {tuple(x0.shape)}, the network expects (B, *{self.latent_shape})")
        return x0

    def labels(self, labels: Tensor) -> Tensor:
        """The labels the network sees: the null class everywhere when ``unconditional`` (RAE App. K)."""
        return torch.full_like(labels, self.num_classes) if self.unconditional else labels

    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x0 = self.diffusion_input(batch)
        out = rae_transport_loss(self.net, x0, self.labels(batch["label"]), self.time_sampler, generator=generator)
        return {"loss": out.loss.mean()}

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW; "hold_linear" is RAE App. F's constant-then-linear schedule (in epochs), else the base's."""
        if self.schedule_kind != "hold_linear":
            return super().configure_optimizers()
        optimizer = torch.optim.AdamW(self.trainable_parameters(), lr=self.lr, betas=self.betas,
                                      weight_decay=self.weight_decay, eps=self.adam_eps)
        spe = _steps_per_epoch(self) if self._trainer is not None else 1
        hold, end = int(round(self.lr_hold_epochs * spe)), int(round(self.lr_decay_end_epoch * spe))
        ratio = self.min_lr / self.lr if self.lr > 0 else 0.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: hold_linear_factor(step, hold, end, ratio, self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        num_steps: int | None = None,
        cfg_scale: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        sampler: Literal["ode", "sde"] | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        step_noise: Tensor | None = None,
        progress: bool = False,
        return_latents: bool = False,
    ) -> Tensor:
        """Images in [−1, 1] decoded by the stage-1 decoder (``return_latents``: the normalised latents).

        With ``self.autoguide`` set (``callbacks.AutoGuidance``; RAE App. D: DiT^DH-S at an early epoch) the
        guide replaces CFG: v = v_guide + w·(v − v_guide) on the guide's t-interval, same labels."""
        labels = self.labels(labels.to(self.device))
        if noise is None:
            noise = torch.randn((len(labels), *self.latent_shape), device=self.device, generator=generator)
        denoiser = self.flow_guidance(self.cfg_scale if cfg_scale is None else cfg_scale,
                                      cfg_interval or self.cfg_interval)
        velocity = denoiser.with_labels(labels)
        steps = num_steps or self.transport.num_steps
        method = sampler or self.transport.method
        was_training = self.net.training
        self.net.eval()
        try:
            if steps < 2 and method == "ode" and not self.transport.official:
                # one Euler step (rae_time_grid needs two grid points; AutoGuidance probes with one)
                x0 = euler_ode_sample(velocity, noise, steps, shift=self.shift, progress=progress)
            else:
                x0 = self.transport.sample(velocity, noise, steps, method, generator=generator, step_noise=step_noise,
                                           progress=progress)
        finally:
            self.net.train(was_training)
        if return_latents or self.tokenizer is None:
            return x0
        return self.decode(x0)


__all__ = ["RAEStage1", "RAEStage2", "hold_linear_factor", "load_stage1_tokenizer", "rae_denoiser", "rae_tokenizer"]
