"""SpeedDiff's joint objective (SpeedDiff supp. Algorithm 1, A.2.2–A.2.6, Tab. 14) as two plain functions.

Generator step, one backward over encoder φ, decoder ψ, denoiser θ (and the REPA++ adapters ω):

    z0 = μ_φ(x0) + σ_φ(x0)·ε'                                   (eq. 7, reparameterised)
    x̂_vae = D_ψ(z0);   L_VAE = w_mse·MSE + w_lpips·LPIPS + w_gan·L_G(PatchGAN(x̂_vae)) + w_kl·KL     (A.2.2)
    z_t = (1 − t)·z0 + t·ε;   L_Diff = ‖V_θ(z_t, t) − (ε − z0)‖²                             (eq. 8)
    x̂_tpr = D_ψ(z_t − t·V_θ);  L_TPR = w·MSE(x̂_tpr, x0) + w·LPIPS(x̂_tpr, x0)                 (eqs. 9–10)
    L_REPA++ = −cos(y, h_ω1(z0)) − cos(y, h_ω2(f_t)),  y = VFM(x0) patch tokens                (A.2.5)
    L = L_VAE + L_Diff + L_TPR (+ L_REPA++)

Weights (A.2.6): 1 everywhere except the GAN term (0.1) and the KL term (1e-5); the GAN weight is fixed
(no adaptive weight) and on from step 0. The two decoder passes (x̂_vae, x̂_tpr) run as one batch of 2B, and
LPIPS of both as one call: the same values as two passes, one kernel launch sequence.

Discriminator step: hinge loss on (x0, sg(x̂_vae)) + 0.05·LeCam with EMA-0.999 anchors (A.2.2, Tab. 14).
With a frozen VAE (AutoGuidance bad model, A.3.1) only L_Diff (and TPR / REPA++ if their weights are set)
remain; z0 is then drawn without gradient.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.diffusion import TimeSampler, flow_interpolate, flow_velocity_target
from speedrun_diffusion.lightning_modules.losses.flow_matching import velocity_mse
from speedrun_diffusion.lightning_modules.losses.gan import (
    GANPhase,
    LeCamRegularizer,
    disc_accuracy,
    hinge_d_loss,
    vanilla_g_loss,
)
from speedrun_diffusion.lightning_modules.losses.kl import kl_loss
from speedrun_diffusion.lightning_modules.losses.repa_pp import REPAPlusPlus, capture_block_output
from speedrun_diffusion.lightning_modules.losses.tpr import tweedie_latent


@dataclass(frozen=True)
class SpeedDiffWeights:
    """Loss coefficients of SpeedDiff A.2.6 / Tab. 14 (REPA++ weights apply only when REPA++ is on)."""

    mse: float = 1.0
    lpips: float = 1.0
    gan: float = 0.1
    kl: float = 1e-5
    diffusion: float = 1.0
    tpr_mse: float = 1.0
    tpr_lpips: float = 1.0
    lecam: float = 0.05

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ValueError(f"SpeedDiff loss weight {name} must be >= 0, got {value}")


class GeneratorOutput(NamedTuple):
    """Loss terms (``"loss"`` = total) and the detached VAE reconstruction the discriminator step reuses."""

    losses: dict[str, Tensor]
    reconstruction: Tensor | None


def speeddiff_generator_losses(
    vae: nn.Module,
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    time_sampler: TimeSampler,
    weights: SpeedDiffWeights = SpeedDiffWeights(),
    train_vae: bool = True,
    lpips: Callable[..., Tensor] | None = None,
    discriminator: nn.Module | None = None,
    gen_loss: Callable[[Tensor], Tensor] = vanilla_g_loss,
    repa: REPAPlusPlus | None = None,
    vfm_tokens: Tensor | None = None,
    repa_depth: int = 8,
    phase: GANPhase = GANPhase(),
    t: Tensor | None = None,
    noise: Tensor | None = None,
    latent_noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> GeneratorOutput:
    """Algorithm 1's loss L for images x0 in [−1, 1] and int64 labels; every random draw can be pinned
    (``latent_noise`` ε', ``noise`` ε, ``t``). ``vae`` has ``posterior(images)`` and ``decode(latents)``;
    ``discriminator`` logits are scored in its current mode (the caller puts it in eval mode)."""
    if train_vae:
        posterior = vae.posterior(images)
        z0 = posterior.sample(latent_noise, generator)
    else:
        with torch.no_grad():
            posterior = None
            z0 = vae.posterior(images).sample(latent_noise, generator)
    if t is None:
        t = time_sampler(z0.shape[0], device=z0.device, generator=generator)
    if noise is None:
        noise = torch.randn(z0.shape, device=z0.device, dtype=z0.dtype, generator=generator)
    z_t = flow_interpolate(z0, noise, t)
    use_repa = repa is not None and (repa.latent_weight > 0 or repa.diffusion_weight > 0)
    if use_repa:
        with capture_block_output(net, repa_depth) as captured:
            velocity = net(z_t, t, labels, generator=generator)
    else:
        velocity = net(z_t, t, labels, generator=generator)
    losses = {"diffusion": velocity_mse(velocity, flow_velocity_target(z0, noise)).mean()}
    total = weights.diffusion * losses["diffusion"]

    use_tpr = weights.tpr_mse > 0 or (weights.tpr_lpips > 0 and lpips is not None)
    to_decode = ([z0] if train_vae else []) + ([tweedie_latent(z_t, t, velocity)] if use_tpr else [])
    reconstruction = None
    if to_decode:
        decoded = vae.decode(torch.cat(to_decode)).float()  # x̂_vae and x̂_tpr in one batch
        x_vae, x_tpr = (decoded.chunk(2) if train_vae and use_tpr else
                        (decoded, None) if train_vae else (None, decoded))
        want_lpips = [x is not None and w > 0 for x, w in
                      ((x_vae, weights.lpips if phase.lpips else 0.0), (x_tpr, weights.tpr_lpips))]
        perceptual: list[Tensor | None] = [None, None]
        if lpips is not None and any(want_lpips):
            fakes = [x for x, want in zip((x_vae, x_tpr), want_lpips) if want]
            per_image = lpips(torch.cat(fakes), images.repeat(len(fakes), 1, 1, 1), reduction="none").flatten()
            parts = iter(per_image.float().chunk(len(fakes)))
            perceptual = [next(parts).mean() if want else None for want in want_lpips]
        if x_vae is not None:
            losses["mse"] = (x_vae - images.float()).square().mean()
            losses["kl"] = kl_loss(posterior.mean, posterior.logvar)
            vae_loss = weights.mse * losses["mse"] + weights.kl * losses["kl"]
            if perceptual[0] is not None:
                losses["lpips"] = perceptual[0]
                vae_loss = vae_loss + weights.lpips * losses["lpips"]
            if phase.adversarial and discriminator is not None and weights.gan > 0:
                losses["gan"] = gen_loss(discriminator(x_vae.to(images.dtype)))
                vae_loss = vae_loss + weights.gan * losses["gan"]
            losses["vae"] = vae_loss
            total = total + vae_loss
            reconstruction = x_vae.detach()
        if x_tpr is not None:
            losses["tpr_mse"] = (x_tpr - images.float()).square().mean()
            tpr = weights.tpr_mse * losses["tpr_mse"]
            if perceptual[1] is not None:
                losses["tpr_lpips"] = perceptual[1]
                tpr = tpr + weights.tpr_lpips * losses["tpr_lpips"]
            losses["tpr"] = tpr
            total = total + tpr
    if use_repa:
        if vfm_tokens is None:
            raise ValueError("REPA++ is on but no VFM tokens were given")
        num_tokens = z0.shape[-2] * z0.shape[-1]
        terms = repa(z0, captured["features"], vfm_tokens[:, -num_tokens:])  # patch tokens (drop cls/registers)
        losses.update(terms)
        total = total + terms["repa_pp"]
    if posterior is not None:
        losses["logvar_mean"] = posterior.logvar.detach().float().mean()  # Tab. 11's diagnostic
        # nothing normalises z0 against the flow's unit noise: a falling std is the latent collapse to watch
        losses["latent_std"] = z0.detach().float().std()
    losses["loss"] = total
    return GeneratorOutput(losses, reconstruction)


def speeddiff_discriminator_losses(
    discriminator: nn.Module,
    real: Tensor,
    fake: Tensor,
    lecam: LeCamRegularizer | None = None,
    lecam_weight: float = 0.05,
    d_loss: Callable[[Tensor, Tensor], Tensor] = hinge_d_loss,
) -> dict[str, Tensor]:
    """PatchGAN hinge loss on real images and detached reconstructions + ``lecam_weight``·R_LC (SpeedDiff
    A.2.2: spectral norm and LeCam instead of warm-up or adaptive weights); ``"d_loss"`` is the total."""
    logits_real = discriminator(real)
    logits_fake = discriminator(fake.detach().to(real.dtype))
    out = {"d_hinge": d_loss(logits_real, logits_fake)}
    total = out["d_hinge"]
    if lecam is not None and lecam_weight > 0:
        out["lecam"] = lecam(logits_real.float(), logits_fake.float())
        total = total + lecam_weight * out["lecam"]
    out.update(d_loss=total, disc_accuracy=disc_accuracy(logits_real.detach(), logits_fake.detach()),
               logits_real=logits_real.detach().float().mean(), logits_fake=logits_fake.detach().float().mean())
    return out


__all__ = ["GeneratorOutput", "SpeedDiffWeights", "speeddiff_discriminator_losses", "speeddiff_generator_losses"]
