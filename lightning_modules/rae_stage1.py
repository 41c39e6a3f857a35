"""`RAEStage1`: the ViT decoder of a frozen representation encoder, trained with L1 + LPIPS + GAN ("Diffusion
Transformers with Representation Autoencoders", Sec. 3-4, App. E Table 12; reference/rae_stage1/README
"Stage-1 training recipe"):

    x ─frozen encoder E (+ noise z + σ·n, Sec. 4.3)─▶ z ─decoder D─▶ x̂
    L_G = ‖x̂ − x‖₁ + ω_L·LPIPS(x̂, x) + ω_G·λ·(−D_disc(DiffAug(x̂)))     λ = ‖∇L_rec‖ / (‖∇L_G‖ + ε) on D's last layer
    L_D = hinge(D_disc(DiffAug(x)), D_disc(DiffAug(q8(x̂_eval))))       (frozen DINO-S/8 + trainable heads)

with ω_L = 1, ω_G = 0.75, Adam β (0.5, 0.9), cosine LR 2e-4 → 2e-5 after a one-epoch warm-up for both the
decoder and the discriminator; LPIPS from epoch 0, discriminator updates from epoch 6, adversarial loss from
epoch 8 — the recipe reads ``self.gan_phase`` every step and ``callbacks.GANWarmup`` sets it. One decoder step,
then (when the discriminator is on) one discriminator step on 8-bit quantised eval-mode reconstructions, as the
official ``train_stage1.py`` (``GANRecipe``). ``predict`` encodes images to raw latents (``callbacks.LatentWriter``
caches them) and, with ``stats_output``, saves the per-element dataset mean / variance that stage 2 normalises
with (official ``calculate_stat.py`` output format). ``load_stage1_tokenizer`` gives stage 2 the trained RAE.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.checkpoints.rae_stage1 import build_rae
from speedrun_diffusion.lightning_modules.compilation import CompileConfig
from speedrun_diffusion.lightning_modules.eval_mode import eval_mode
from speedrun_diffusion.lightning_modules.gan_recipe import GANRecipe
from speedrun_diffusion.lightning_modules.losses.diffaug import DiffAug
from speedrun_diffusion.lightning_modules.losses.gan import (
    GANPhase,
    adaptive_weight,
    disc_accuracy,
    quantize_fake,
    select_gan_losses,
)
from speedrun_diffusion.lightning_modules.losses.lpips import LPIPS
from speedrun_diffusion.lightning_modules.networks.discriminators import DinoDiscriminator
from speedrun_diffusion.lightning_modules.networks.rae import RAE
from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder
from speedrun_diffusion.lightning_modules.nonfinite import NonFiniteConfig
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from speedrun_diffusion.lightning_modules.sharding import ShardingConfig
from speedrun_diffusion.lightning_modules.weights import (
    check_written_by,
    ema_weights,
    load_exact,
    read_checkpoint,
    weights_under,
)

log = logging.getLogger(__name__)

SigmaDist = Literal["uniform", "half_normal"]

__all__ = ["RAEStage1", "load_stage1_tokenizer"]


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
    check_written_by(checkpoint, RAEStage1.recipe_name(), f"stage1_checkpoint {path}", "pass a checkpoint of RAEStage1")
    hparams = checkpoint.get("hyper_parameters") or {}
    missing = [k for k in ("encoder", "decoder") if k not in hparams]
    if missing:
        raise ValueError(f"stage1_checkpoint {path} has no hyper-parameters {missing}: not a RAEStage1 checkpoint")
    rae = build_rae(**{k: hparams[k] for k in TOKENIZER_ARGS if k in hparams})
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



class RAEStage1(GANRecipe):
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

    Optimisation (``optimizer``; ``GANRecipe``: manual, two optimizers): AdamW β (0.5, 0.9), linear warm-up over one
    epoch, then cosine 2e-4 → 2e-5 at the end of training, stepped per decoder step; the discriminator's schedule
    (same settings, ``optimizer.discriminator_lr`` if given) steps only on its updates, as the official code.
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
        stats_output: str | None = None,
        num_classes: int = 1000,
        optimizer: OptimizerConfig = OptimizerConfig(lr=2e-4, betas=(0.5, 0.9), warmup_epochs=1.0, schedule="cosine",
                                                     min_lr=2e-5),
        sharding: ShardingConfig = ShardingConfig(),
        nonfinite: NonFiniteConfig = NonFiniteConfig(),
        compile: CompileConfig = CompileConfig(),  # noqa: A002
    ) -> None:
        super().__init__(optimizer, sharding, nonfinite, compile=compile)
        # stats_output is where a predict run writes, not part of the model: a --ckpt_path must not override it
        self.save_hyperparameters(ignore=["lpips", "discriminator", "stats_output"])
        for name, value in (("perceptual_weight", perceptual_weight), ("disc_weight", disc_weight),
                            ("max_d_weight", max_d_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.tokenizer = build_rae(encoder, decoder, encoder_input_size, decoder_patch_size, noise_tau,
                                   pretrained_encoder, decoder_path, None, sigma_dist, encoder_overrides,
                                   decoder_overrides)
        self.tokenizer_name = f"RAE-{encoder}"
        if train_losses and lpips is None:
            lpips = LPIPS()  # lpips package VGG16 + v0.1 heads (torchvision ImageNet weights)
        if train_losses and discriminator is None:
            discriminator = DinoDiscriminator("S_8", backbone_checkpoint=disc_backbone)
        self.lpips = lpips if train_losses else None
        self.discriminator = discriminator if train_losses else None
        self.d_loss_fn, self.g_loss_fn = select_gan_losses(disc_loss, gen_loss)
        self.diffaug = DiffAug(diffaug_prob, diffaug_cutout)
        self.perceptual_weight = perceptual_weight
        self.disc_weight = disc_weight
        self.max_d_weight = max_d_weight
        self.stats_output = stats_output
        self._num_classes = num_classes
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
        and the discriminator heads; the ViT-XL decoder (415M) fits one GPU, so stage 1 runs data parallel. The
        ``compile`` group compiles the decoder and the frozen encoder and LPIPS (``compiled_modules``)."""
        if self.device_mesh is not None:
            raise ValueError("RAEStage1 trains the decoder and the discriminator heads without sharding: use data "
                             "parallelism (trainer.strategy: ddp, configs/scale/ddp_8gpu.yaml), not "
                             "ModelParallelStrategy / FSDP2 (the sharding group is accepted only so add-ons compose)")
        if self.compile_config.enabled:
            # the adaptive weight differentiates the decoder's graph twice (retain_graph), which a compiled
            # backward with donated buffers refuses (seen under DDP); donation only saves memory
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
        super().configure_model()  # one device / DDP: the compile group

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
                losses.update(adaptive_weight=lam.weight, rec_grad_norm=lam.rec_grad_norm,
                              gan_grad_norm=lam.gan_grad_norm)
                total = rec + self.disc_weight * lam.weight * losses["gan"]
        losses["loss"] = total
        return losses

    def discriminator_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hinge loss on DiffAug of 8-bit quantised eval-mode reconstructions vs real images, fake first
        (reference/rae_stage1/README "Discriminator step"), discriminator in train mode."""
        images = batch["image"]
        with torch.no_grad(), eval_mode(self.tokenizer):  # no noise for the fakes
            fake = quantize_fake(self.reconstruct(images))
        self.discriminator.train()
        logits_fake = self.discriminator(self.diffaug(fake))
        logits_real = self.discriminator(self.diffaug(images))
        return {"d_loss": self.d_loss_fn(logits_real, logits_fake),
                "disc_accuracy": disc_accuracy(logits_real.detach(), logits_fake.detach()),
                "logits_real": logits_real.detach().mean(), "logits_fake": logits_fake.detach().mean()}

    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if self._preview is None:
            self._preview = batch["image"][:16].detach().clone()
        return self.generator_losses(batch["image"])

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
        with eval_mode(self.tokenizer):
            recon = (self.reconstruct(images) * 2 - 1).clamp(-1, 1)
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
