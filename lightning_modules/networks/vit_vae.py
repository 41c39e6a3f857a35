"""ViT-VAE: SpeedDiff's transformer tokenizer, trained end to end with the denoiser (SpeedDiff supp. A.1.1).

    encode:  x (B, 3, H, W) ─PatchEmbed p×p─▶ tokens (B, (H/p)(W/p), D) ─N × [RoPE attention + SwiGLU]─▶
             norm ─Linear(D, 2d)─▶ moments (B, 2d, H/p, W/p) = [μ; log σ²]        (A.1.1 "Encoder", eq. 6)
             z0 = μ + σ·ε                                                          (eq. 7, reparameterisation)
    decode:  z0 (B, d, H/p, W/p) ─Linear(d, D)─▶ N × blocks ─▶ norm ─Linear(D, p²·3)─▶ unpatchify ─▶
             Conv2d 3×3 (identity at init) ─▶ image in [−1, 1]                     (A.1.1 "Decoder")

Sizes (Tab. 14): B / L / XL = 4 / 8 / 9 layers each for the encoder and the decoder, width 768 / 1024 /
1408, 12 / 16 / 22 heads of 64 channels, d = 32 latent channels; p = 16 at 256² and p = 32 at 512², so the
latent grid is 16×16 at both resolutions.

Choices the paper leaves open, fixed so that the parameter and FLOP counts of Tab. 7 are reproduced
(``benchmarks/speeddiff_counts.py``: parameters within 0.1 %, GFLOPs within 0.2 %):

* SwiGLU hidden width = ⌈(2/3)·4·D / 256⌉·256 (LLaMA rounding): 2048 / 2816 / 3840. Without the rounding
  the L and XL encoders come out 2.1 % / 1.5 % too small; a multiple of 128 gives the same widths.
* biases on every Linear (qkv, proj, SwiGLU, heads); no absolute position embedding (2-D RoPE only,
  θ = 10 000, the axial form of ``blocks.RoPE2D``); pre-norm RMSNorm with a weight, eps 1e-6 (as the
  LightningDiT-based denoiser; LayerNorm with affine also fits Tab. 7, ``norm="layernorm"``) and a final
  norm before each head; no QK-norm ("standard transformer blocks"; ``qk_norm`` switches it on).
* the encoder head outputs [μ; log σ²] (2d = 64 channels): the encoder/decoder parameter gap of Tab. 7
  (0.03 / 0.03 / 0.05 M) is, to rounding, this head's extra d·D weights (ours 0.024 / 0.032 / 0.044 M).
* the refinement conv is 3×3, 3 → 3 channels, initialised to the identity (Dirac kernel, zero bias).
* log σ² is clamped only from above (20, for a finite exp): Tab. 11 reports mean log-variances down to
  −123 (KL weight 0), which the LDM clamp at −30 would forbid.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks import (
    Attention,
    PatchEmbed,
    RMSNorm,
    RoPE2D,
    SwiGLU,
    swiglu_hidden_dim,
    unpatchify,
)
from speedrun_diffusion.lightning_modules.networks.gaussian_autoencoder import GaussianAutoencoder

NormKind = Literal["layernorm", "rmsnorm"]

# SpeedDiff Tab. 14 ViT-VAE rows: size -> (layers per encoder/decoder, hidden, heads).
VIT_VAE_SIZES: dict[str, tuple[int, int, int]] = {
    "B": (4, 768, 12),
    "L": (8, 1024, 16),
    "XL": (9, 1408, 22),
}
# SpeedDiff A.1.1: patch size per image resolution.
VIT_VAE_PATCH: dict[int, int] = {256: 16, 512: 32}


@dataclass(frozen=True)
class ViTVAEConfig:
    """Every hyper-parameter of the ViT-VAE; defaults are ViT-VAE-B at 256² (Tab. 14)."""

    image_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    latent_channels: int = 32
    hidden_size: int = 768
    encoder_depth: int = 4
    decoder_depth: int = 4
    num_heads: int = 12
    mlp_ratio: float = 4.0
    swiglu_multiple_of: int = 256
    norm: NormKind = "rmsnorm"
    qk_norm: bool = False
    rope_theta: float = 10000.0
    refine_kernel_size: int = 3
    logvar_range: tuple[float, float] = (-1.0e4, 20.0)
    scaling_factor: float = 1.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_hidden_dim(self) -> int:
        return swiglu_hidden_dim(self.hidden_size, self.mlp_ratio, self.swiglu_multiple_of)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(d, H/p, W/p): the diffusion model's input shape."""
        return (self.latent_channels, self.grid_size, self.grid_size)


def vit_vae_preset(name: str = "B", resolution: int = 256, **overrides) -> ViTVAEConfig:
    """ViT-VAE-B/L/XL at 256 or 512 (SpeedDiff Tab. 14); ``name`` is "B" or "ViT-VAE-B"; ``overrides`` replace fields."""
    size = name.removeprefix("ViT-VAE-")
    if size not in VIT_VAE_SIZES:
        raise ValueError(f"unknown ViT-VAE size {name!r}; expected one of {sorted(VIT_VAE_SIZES)}")
    if resolution not in VIT_VAE_PATCH and "patch_size" not in overrides:
        raise ValueError(f"no ViT-VAE patch size for resolution {resolution}; expected one of {sorted(VIT_VAE_PATCH)} "
                         "or an explicit patch_size")
    depth, hidden, heads = VIT_VAE_SIZES[size]
    cfg = ViTVAEConfig(
        image_size=resolution, patch_size=VIT_VAE_PATCH.get(resolution, 16), hidden_size=hidden,
        encoder_depth=depth, decoder_depth=depth, num_heads=heads,
    )
    return replace(cfg, **overrides)


def _check_config(cfg: ViTVAEConfig) -> None:
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"image_size {cfg.image_size} is not divisible by patch_size {cfg.patch_size}")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
    if cfg.norm not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {cfg.norm!r}")
    if cfg.refine_kernel_size % 2 == 0:
        raise ValueError(f"refine_kernel_size must be odd to keep the image size, got {cfg.refine_kernel_size}")


def _norm(kind: NormKind, dim: int) -> nn.Module:
    """Pre-norm with a learnable weight (and bias for LayerNorm), eps 1e-6."""
    return nn.LayerNorm(dim, eps=1e-6) if kind == "layernorm" else RMSNorm(dim, eps=1e-6, affine=True)


class ViTBlock(nn.Module):
    """x ← x + Attn(norm(x)) with 2-D RoPE; x ← x + SwiGLU(norm(x)) (SpeedDiff A.1.1 transformer block)."""

    def __init__(self, cfg: ViTVAEConfig) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.norm1 = _norm(cfg.norm, dim)
        self.attn = Attention(dim, cfg.num_heads, qkv_bias=True, qk_norm=cfg.qk_norm)
        self.norm2 = _norm(cfg.norm, dim)
        self.mlp = SwiGLU(dim, cfg.mlp_hidden_dim)

    def forward(self, x: Tensor, rope: RoPE2D) -> Tensor:
        x = x + self.attn(self.norm1(x), rope=rope)[0]
        return x + self.mlp(self.norm2(x))


class _Trunk(nn.Module):
    """RoPE table + ``depth`` blocks + final norm, shared by encoder and decoder."""

    def __init__(self, cfg: ViTVAEConfig, depth: int) -> None:
        super().__init__()
        self.rope = RoPE2D(cfg.hidden_size // cfg.num_heads, cfg.grid_size, cfg.rope_theta)
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(depth))
        self.norm = _norm(cfg.norm, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, self.rope)
        return self.norm(x)


def _init_linears(module: nn.Module) -> None:
    """ViT/MAE init: Xavier-uniform Linear weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ViTVAEEncoder(nn.Module):
    """Images (B, 3, H, W) in [−1, 1] → posterior moments [μ; log σ²] (B, 2d, H/p, W/p) (A.1.1 "Encoder")."""

    def __init__(self, cfg: ViTVAEConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.in_channels, cfg.hidden_size, cfg.patch_size)
        self.trunk = _Trunk(cfg, cfg.encoder_depth)
        self.head = nn.Linear(cfg.hidden_size, 2 * cfg.latent_channels)
        _init_linears(self)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear on the flattened patch (MAE)
        nn.init.zeros_(self.patch_embed.proj.bias)

    def forward(self, images: Tensor) -> Tensor:
        cfg = self.cfg
        if images.dim() != 4 or images.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"ViT-VAE encoder expects images (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(images.shape)}"
            )
        tokens = self.head(self.trunk(self.patch_embed(images)))
        g = cfg.grid_size
        return tokens.transpose(1, 2).reshape(images.shape[0], 2 * cfg.latent_channels, g, g)


class ViTVAEDecoder(nn.Module):
    """Latents (B, d, H/p, W/p) → images (B, 3, H, W) (A.1.1 "Decoder"); ``refine`` is the identity at init."""

    def __init__(self, cfg: ViTVAEConfig) -> None:
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        self.embed = nn.Linear(cfg.latent_channels, cfg.hidden_size)
        self.trunk = _Trunk(cfg, cfg.decoder_depth)
        self.head = nn.Linear(cfg.hidden_size, cfg.patch_size**2 * cfg.in_channels)
        k = cfg.refine_kernel_size
        self.refine = nn.Conv2d(cfg.in_channels, cfg.in_channels, k, padding=k // 2)
        _init_linears(self)
        nn.init.dirac_(self.refine.weight)  # centre tap 1 on the own channel: refine(x) = x at init
        nn.init.zeros_(self.refine.bias)

    def forward(self, latents: Tensor) -> Tensor:
        cfg = self.cfg
        if latents.dim() != 4 or latents.shape[1:] != cfg.latent_shape:
            raise ValueError(f"ViT-VAE decoder expects latents (B, {', '.join(map(str, cfg.latent_shape))}), "
                             f"got {tuple(latents.shape)}")
        tokens = self.head(self.trunk(self.embed(latents.flatten(2).transpose(1, 2))))
        images = unpatchify(tokens, cfg.patch_size, cfg.in_channels, cfg.image_size, cfg.image_size)
        return self.refine(images)


class ViTVAE(GaussianAutoencoder):
    """Encoder + decoder with a diagonal Gaussian posterior (SpeedDiff A.1.1, A.2.2 eqs. 6–7).

    Tokenizer contract (DESIGN, the ``GaussianAutoencoder`` surface shared with ``INVAE``): ``posterior(images)``
    → ``DiagonalGaussian``; ``encode(images)`` → latents (a reparameterised sample, or the mean with
    ``sample=False``); ``decode(latents)`` → images; ``forward`` → (posterior, z0, x̂_vae), Algorithm 1's first
    two lines. The diffusion model works on the raw latents (``scaling_factor`` 1: the KL term keeps them near
    unit scale and SpeedDiff names no rescaling).
    """

    def __init__(self, cfg: ViTVAEConfig | None = None) -> None:
        super().__init__()
        cfg = ViTVAEConfig() if cfg is None else cfg
        self.cfg = cfg
        self.logvar_range = cfg.logvar_range
        self.encoder = ViTVAEEncoder(cfg)
        self.decoder = ViTVAEDecoder(cfg)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.cfg.latent_shape

    def moments(self, images: Tensor) -> Tensor:
        """[μ; log σ²] of p_φ(z0 | x0) for images in [−1, 1] (eq. 6)."""
        return self.encoder(images)

    def decode(self, latents: Tensor) -> Tensor:
        """x̂ = D_ψ(z) (A.1.1 "Decoder")."""
        return self.decoder(latents)


__all__ = [
    "VIT_VAE_PATCH",
    "VIT_VAE_SIZES",
    "ViTBlock",
    "ViTVAE",
    "ViTVAEConfig",
    "ViTVAEDecoder",
    "ViTVAEEncoder",
    "vit_vae_preset",
]
