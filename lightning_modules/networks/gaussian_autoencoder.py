"""`GaussianAutoencoder`: the tokenizer surface shared by the KL autoencoders (SR-DiT's INVAE, SpeedDiff's ViT-VAE).

    q(z | x) = N(μ, σ²I) from the moments [μ; log σ²]             (VAE, Kingma & Welling 2014; SpeedDiff eq. 6)
    z = μ + σ·ε                                                      (reparameterisation, SpeedDiff eq. 7)

A subclass supplies ``moments(images)`` (B, 2d, h, w), ``decode(latents)``, ``latent_shape`` and a ``cfg`` with
``scaling_factor``; this base gives ``posterior``, ``encode`` (sample or mean), ``forward`` and the diffusion-scale
conversions (DESIGN tokenizer contract).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from the moments [mean; logvar] (LDM ``DiagonalGaussianDistribution``).

    ``logvar_range`` is the LDM clamp (−30, 20); SpeedDiff's ViT-VAE passes a wider one (its Tab. 11
    reports mean log-variances down to −123).
    """

    def __init__(self, moments: Tensor, logvar_range: tuple[float, float] = (-30.0, 20.0)) -> None:
        self.moments = moments
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(*logvar_range)  # official clamp keeps exp() finite
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """mean + std·ε; ε is ``noise`` if given (DESIGN: injectable randomness), else drawn."""
        if noise is None:
            noise = torch.randn(self.mean.shape, device=self.mean.device, dtype=self.mean.dtype, generator=generator)
        return self.mean + self.std * noise.to(self.mean)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q ‖ N(0, I)) summed over C, H, W, shape (B,) (VAE, Kingma & Welling 2014, App. B)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class GaussianAutoencoder(nn.Module):
    """Encoder to a diagonal Gaussian posterior + decoder; ``logvar_range`` is the posterior's clamp."""

    logvar_range: tuple[float, float] = (-30.0, 20.0)

    def moments(self, images: Tensor) -> Tensor:
        """[μ; log σ²] (B, 2d, h, w) for images in [−1, 1]."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """Images (≈ [−1, 1]) from raw latents."""
        raise NotImplementedError

    @property
    def scaling_factor(self) -> float:
        return self.cfg.scaling_factor

    def posterior(self, images: Tensor) -> DiagonalGaussian:
        """q(z | x) for images in [−1, 1]."""
        return DiagonalGaussian(self.moments(images), logvar_range=self.logvar_range)

    def encode(
        self, images: Tensor, sample: bool = True, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Raw latents: a posterior sample (``noise`` = ε pins it) or the mean (``sample=False``)."""
        post = self.posterior(images)
        return post.sample(noise, generator) if sample else post.mode()

    def forward(
        self, images: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[DiagonalGaussian, Tensor, Tensor]:
        """(posterior, z sample, reconstruction D(z))."""
        post = self.posterior(images)
        z = post.sample(noise, generator)
        return post, z, self.decode(z)

    def to_diffusion(self, latents: Tensor) -> Tensor:
        """Raw latents → the diffusion model's scale (× ``scaling_factor``)."""
        return latents * self.scaling_factor

    def from_diffusion(self, latents: Tensor) -> Tensor:
        """Diffusion-scale latents → raw latents for ``decode``."""
        return latents / self.scaling_factor


__all__ = ["DiagonalGaussian", "GaussianAutoencoder"]
