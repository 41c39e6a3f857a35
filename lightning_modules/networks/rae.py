"""Representation Autoencoder (RAE Sec. 3-4): frozen encoder E + trainable ViT decoder D, as a tokenizer.

    encode: x ∈ [-1, 1] ─▶ [0, 1] ─bicubic resize to encoder_input_size─▶ (x − μ_img)/σ_img ─E─▶
            tokens (B, N, C) ─[train: z + σ·n, RAE Sec. 4.3]─▶ (B, C, h, w)
            ─[(z − μ)/sqrt(σ² + eps), statistics per (C, h, w)]─▶ latent
    decode: latent ─invert the statistics─▶ tokens ─D─▶ unpatchify ─·σ_img + μ_img─▶ [0, 1] ─▶ [-1, 1]

The official code works in [0, 1] (``ToTensor``); ``encode_unit_range`` / ``decode_unit_range`` are that
exact computation and ``encode`` / ``decode`` convert at the boundary to the library's [-1, 1] contract
(DESIGN "Contracts"). Decoded images are not clamped. ``encode`` never builds a graph (frozen encoder).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder
from speedrun_diffusion.lightning_modules.networks.rae_encoder import RepresentationEncoder
from speedrun_diffusion.lightning_modules.weights import read_state_dict

SIGMA_DISTRIBUTIONS = ("uniform", "half_normal")


def noise_augment(
    tokens: Tensor,
    tau: float,
    u: Tensor | None = None,
    n: Tensor | None = None,
    sigma_dist: str = "uniform",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Noise-augmented decoder input z + σ·n, n ~ N(0, I), one σ per sample (RAE Sec. 4.3).

    σ = τ·u. ``sigma_dist="uniform"`` (default) is the *official code*: u ~ U[0, 1), so σ ~ U[0, τ).
    ``"half_normal"`` is the *paper's* text: u ~ N(0, 1) and σ = τ·|u| ~ |N(0, τ²)|. Deviation noted in
    RAE README "Things that differ" 1; the released decoders (τ = 0.8) were trained with the uniform draw.
    ``u`` (B, 1, …, 1) and ``n`` (tokens' shape) may be given to replay draws; otherwise they are drawn in
    the official order (u first, then n).
    """
    if sigma_dist not in SIGMA_DISTRIBUTIONS:
        raise ValueError(f"sigma_dist={sigma_dist!r}; expected one of {SIGMA_DISTRIBUTIONS}")
    shape = (tokens.shape[0],) + (1,) * (tokens.ndim - 1)
    if u is None:
        draw = torch.rand if sigma_dist == "uniform" else torch.randn
        u = draw(shape, generator=generator, device=tokens.device, dtype=tokens.dtype)
    if n is None:
        n = torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype)
    if n.shape != tokens.shape:
        raise ValueError(f"noise n has shape {tuple(n.shape)}, tokens {tuple(tokens.shape)}")
    sigma = tau * (u if sigma_dist == "uniform" else u.abs())
    return tokens + sigma.reshape(shape).to(tokens) * n.to(tokens)


class RAE(nn.Module):
    """The RAE tokenizer (RAE Sec. 3): ``encode(images in [-1, 1]) -> latents (B, C, h, w)`` and back.

    ``noise_tau`` > 0 adds the Sec. 4.3 noise in ``encode`` while the module is in training mode (stage-1
    decoder training, τ = 0.8); ``latent_mean`` / ``latent_var`` (C, h, w) switch on the per-element latent
    normalisation used by stage 2 (official ``normalization_stat_path``, eps 1e-5). The encoder is frozen.
    """

    def __init__(
        self,
        encoder: RepresentationEncoder,
        decoder: RAEDecoder,
        encoder_input_size: int = 224,
        noise_tau: float = 0.0,
        latent_mean: Tensor | None = None,
        latent_var: Tensor | None = None,
        eps: float = 1e-5,
        sigma_dist: str = "uniform",
    ) -> None:
        super().__init__()
        if decoder.cfg.latent_dim != encoder.cfg.hidden_size:
            raise ValueError(
                f"decoder latent_dim={decoder.cfg.latent_dim} != encoder hidden_size={encoder.cfg.hidden_size}"
            )
        if sigma_dist not in SIGMA_DISTRIBUTIONS:
            raise ValueError(f"sigma_dist={sigma_dist!r}; expected one of {SIGMA_DISTRIBUTIONS}")
        if noise_tau < 0:
            raise ValueError(f"noise_tau={noise_tau} must be >= 0")
        self.encoder = encoder.requires_grad_(False)
        self.decoder = decoder
        self.encoder_input_size = int(encoder_input_size)
        self.grid_size = encoder.grid_size(self.encoder_input_size)
        self.noise_tau = float(noise_tau)
        self.sigma_dist = sigma_dist
        self.eps = float(eps)
        self.register_buffer("latent_mean", None)
        self.register_buffer("latent_var", None)
        if (latent_mean is None) != (latent_var is None):
            raise ValueError("latent_mean and latent_var must be given together")
        if latent_mean is not None:
            self.set_latent_stats(latent_mean, latent_var)

    def architecture(self) -> dict:
        """The constructor arguments that rebuild this RAE with random weights (statistics and weights are tensors
        of its state dict): its encoder and decoder modules and the plain settings."""
        return {"encoder": self.encoder, "decoder": self.decoder, "encoder_input_size": self.encoder_input_size,
                "noise_tau": self.noise_tau, "eps": self.eps, "sigma_dist": self.sigma_dist}

    # ---- latent statistics ---------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent, e.g. (768, 16, 16) for DINOv2-B at 224 px."""
        return (self.encoder.cfg.hidden_size, self.grid_size, self.grid_size)

    def set_latent_stats(self, mean: Tensor, var: Tensor) -> None:
        """Per-element latent mean / variance of shape (C, h, w) (official ``calculate_stat.py`` output)."""
        device = self.encoder.image_mean.device  # follow the module if it was already moved
        mean, var = torch.as_tensor(mean).float().to(device), torch.as_tensor(var).float().to(device)
        for name, t in (("mean", mean), ("var", var)):
            if tuple(t.shape) != self.latent_shape:
                raise ValueError(f"latent {name} has shape {tuple(t.shape)}, expected {self.latent_shape} (C, h, w)")
        self.latent_mean, self.latent_var = mean, var

    def load_latent_stats(self, path: str | Path) -> None:
        """Read the official ``{'mean', 'var'}`` statistics file (``normalization_stat_path``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"RAE latent statistics file not found: {path}")
        stats = read_state_dict(path, "RAE latent statistics", unwrap=())
        if not {"mean", "var"} <= set(stats):
            raise ValueError(f"{path}: expected a dict with 'mean' and 'var'")
        self.set_latent_stats(stats["mean"], stats["var"])

    def normalize_latent(self, z: Tensor) -> Tensor:
        """z_n = (z − μ)/sqrt(σ² + eps) if statistics are set (RAE README "Data flow" 6), else z."""
        if self.latent_mean is None:
            return z
        return (z - self.latent_mean) / torch.sqrt(self.latent_var + self.eps)

    def denormalize_latent(self, z: Tensor) -> Tensor:
        """Exact inverse of ``normalize_latent``: z·sqrt(σ² + eps) + μ."""
        if self.latent_mean is None:
            return z
        return z * torch.sqrt(self.latent_var + self.eps) + self.latent_mean

    # ---- official [0, 1] computation -----------------------------------------------------------------
    def preprocess(self, images01: Tensor) -> Tensor:
        """[0, 1] images → encoder input: bicubic resize (align_corners=False, no antialias) to
        ``encoder_input_size`` if needed, then (x − μ_img)/σ_img."""
        if images01.ndim != 4 or images01.shape[1] != self.encoder.cfg.in_channels:
            channels = self.encoder.cfg.in_channels
            raise ValueError(f"RAE expects images (B, {channels}, H, W), got {tuple(images01.shape)}")
        s = self.encoder_input_size
        if images01.shape[-2:] != (s, s):
            images01 = F.interpolate(images01, size=(s, s), mode="bicubic", align_corners=False)
        return (images01 - self.encoder.image_mean) / self.encoder.image_std

    def tokens_to_latent(self, tokens: Tensor) -> Tensor:
        """(B, N, C) raster tokens → (B, C, h, w)."""
        b, n, c = tokens.shape
        if n != self.grid_size**2:
            raise ValueError(f"{n} tokens do not match the {self.grid_size}x{self.grid_size} grid")
        return tokens.transpose(1, 2).reshape(b, c, self.grid_size, self.grid_size)

    @staticmethod
    def latent_to_tokens(z: Tensor) -> Tensor:
        """(B, C, h, w) → (B, h·w, C) raster tokens."""
        if z.ndim != 4:
            raise ValueError(f"RAE latents must be (B, C, h, w), got {tuple(z.shape)}")
        return z.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def encode_unit_range(
        self, images01: Tensor, noise_u: Tensor | None = None, noise_n: Tensor | None = None
    ) -> Tensor:
        """Official ``RAE.encode`` on [0, 1] images → latent (B, C, h, w).

        Noise (``noise_augment`` with τ = ``noise_tau``) is added to the tokens before the reshape and
        the normalisation when the module is training and τ > 0, or whenever ``noise_u`` is given
        (replaying stored draws ``noise_u`` (B, 1, 1), ``noise_n`` (B, N, C)).
        """
        tokens = self.encoder(self.preprocess(images01))
        if (self.training and self.noise_tau > 0) or noise_u is not None:
            tokens = noise_augment(tokens, self.noise_tau, noise_u, noise_n, self.sigma_dist)
        return self.normalize_latent(self.tokens_to_latent(tokens))

    def decode_unit_range(self, latents: Tensor) -> Tensor:
        """Official ``RAE.decode`` → images (B, 3, p_d·h, p_d·w) in [0, 1] range (not clamped)."""
        tokens = self.latent_to_tokens(self.denormalize_latent(latents))
        return self.decoder.decode(tokens) * self.encoder.image_std + self.encoder.image_mean

    # ---- tokenizer contract ([-1, 1]) ------------------------------------------------------------------
    def encode(self, images: Tensor, noise_u: Tensor | None = None, noise_n: Tensor | None = None) -> Tensor:
        """Images in [-1, 1] (B, 3, H, W) → latents (B, C, h, w)."""
        return self.encode_unit_range((images + 1) / 2, noise_u, noise_n)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, C, h, w) → images in [-1, 1] (B, 3, p_d·h, p_d·w), not clamped."""
        return self.decode_unit_range(latents) * 2 - 1

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction decode(encode(x)) in [-1, 1] (training mode: with noise augmentation)."""
        return self.decode(self.encode(images))
