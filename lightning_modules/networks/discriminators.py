"""GAN discriminators of the tokenizer recipes (DESIGN: networks/discriminators).

* ``DinoDiscriminator`` — RAE stage 1 (RAE App. E "Discriminator Architecture"; reference/rae_stage1/README
  "Discriminator"): a frozen DINO ViT-S/8 whose patch tokens after blocks (2, 5, 8, 11) — plus the last
  block's tokens, inserted first — feed one trainable 1-D conv head each (StyleGAN-T heads with spectral
  norm and a per-sample "BatchNormLocal"). Parameter names follow the official ``DinoDiscriminator`` so its
  state dict (heads only; the backbone is not part of it) loads key for key.
* ``PatchGANDiscriminator`` — SpeedDiff (supplementary A.2.2 "Discriminator Loss"): the pix2pix / VQGAN
  PatchGAN with every BatchNorm replaced by spectral normalisation of the convolutions.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.blocks import Attention, Mlp, PatchEmbed
from speedrun_diffusion.lightning_modules.weights import load_exact, read_state_dict

# DINO ViT recipes of the official discriminator (src/disc/dinodisc.py ``recipes``); RAE trains with S_8.
DINO_RECIPES: dict[str, dict[str, Any]] = {
    "S_8": dict(depth=12, key_depths=(2, 5, 8, 11), norm_eps=1e-6, patch_size=8, in_chans=3, embed_dim=384,
                num_heads=6, mlp_ratio=4.0),
    "S_16": dict(depth=12, key_depths=(2, 5, 8, 11), norm_eps=1e-6, patch_size=16, in_chans=3, embed_dim=384,
                 num_heads=6, mlp_ratio=4.0),
    "B_8": dict(depth=12, key_depths=(2, 5, 8, 11), norm_eps=1e-6, patch_size=8, in_chans=3, embed_dim=768,
                num_heads=12, mlp_ratio=4.0),
    "B_16": dict(depth=12, key_depths=(2, 5, 8, 11), norm_eps=1e-6, patch_size=16, in_chans=3, embed_dim=768,
                 num_heads=12, mlp_ratio=4.0),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------- DINO backbone


class DinoBlock(nn.Module):
    """x ← x + Attn(LN₁ x); x ← x + MLP(LN₂ x): the pre-norm ViT block of DINO (Caron et al. 2021), fused qkv,
    tanh-GELU MLP, LayerNorm eps ``norm_eps`` (reference/rae_stage1/README "Discriminator"). timm key names."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))


class DinoViT(nn.Module):
    """Frozen DINO ViT feature extractor of the RAE discriminator (official ``FrozenDINONoDrop``).

    Input images in [−1, 1] are resized to ``image_size`` (bilinear, align_corners=False, no antialias), mapped
    to ImageNet normalisation by x·(0.5/std) + (0.5 − mean)/std, embedded (patch conv + [CLS] + learned
    positions) and run through the blocks. ``forward`` returns the channels-first patch tokens (B, C, L) of
    the last block followed by those after each block in ``key_depths`` (0-based). The final ``norm`` exists
    only so DINO checkpoints load strictly; the official discriminator never applies it.
    """

    def __init__(
        self,
        depth: int = 12,
        embed_dim: int = 384,
        num_heads: int = 6,
        patch_size: int = 8,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        key_depths: Sequence[int] = (2, 5, 8, 11),
        in_chans: int = 3,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        if any(not 0 <= d < depth for d in key_depths):
            raise ValueError(f"key_depths {tuple(key_depths)} must lie in [0, depth={depth})")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.key_depths = tuple(int(d) for d in key_depths)
        self.image_size = image_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image_size // patch_size) ** 2, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(DinoBlock(embed_dim, num_heads, mlp_ratio, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # [-1, 1] → ImageNet-normalised in one affine map, as the official x_scale / x_shift
        self.register_buffer("x_scale", (0.5 / std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - mean) / std).view(1, -1, 1, 1), persistent=False)

    @property
    def num_taps(self) -> int:
        return len(self.key_depths) + 1

    def position_embedding(self, num_patches: int) -> Tensor:
        """Learned positions, the patch grid resized bilinearly if the token count differs (never at 224)."""
        n0 = self.pos_embed.shape[1] - 1
        if num_patches == n0:
            return self.pos_embed
        g0, g = math.isqrt(n0), math.isqrt(num_patches)
        grid = self.pos_embed[:, 1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(g, g), mode="bilinear", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.ndim != 4 or x.shape[1] != self.patch_embed.proj.in_channels:
            raise ValueError(f"expected images (B, {self.patch_embed.proj.in_channels}, H, W), got {tuple(x.shape)}")
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = x * self.x_scale + self.x_shift
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(tokens.shape[1] - 1)
        taps = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.key_depths:
                taps.append(tokens[:, 1:].transpose(1, 2))
        return [tokens[:, 1:].transpose(1, 2), *taps]


def load_dino_backbone(backbone: DinoViT, checkpoint: str | Path | Mapping[str, Tensor]) -> DinoViT:
    """Load a DINO ViT state dict (timm / DINO key names; a path is read with ``weights_only=True``) strictly.

    As the official loader, the key third of every ``qkv`` bias is zeroed (softmax is invariant to it).
    """
    if isinstance(checkpoint, (str, Path)):
        state = read_state_dict(checkpoint, "DINO discriminator backbone checkpoint", unwrap=())
    else:
        state = checkpoint
    state = {k: v.clone() for k, v in state.items()}
    dim = backbone.embed_dim
    for key, value in state.items():
        if key.endswith("attn.qkv.bias"):
            value[dim:2 * dim] = 0
    return load_exact(backbone, state, "DINO backbone state dict")


# ----------------------------------------------------------------------------------------------- DINO heads


class BatchNormLocal(nn.Module):
    """StyleGAN-T "local" batch norm over (B, C, L): statistics per group of ``virtual_bs`` samples and per
    channel over samples × tokens, biased variance, per-channel affine, no running statistics.

    With ``virtual_bs=1`` (official RAE) this is an instance norm over tokens. Computed in float32.
    """

    def __init__(self, num_features: int, virtual_bs: int = 1, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.virtual_bs = virtual_bs
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.float()
        groups = math.ceil(shape[0] / self.virtual_bs)
        x = x.reshape(groups, -1, shape[-2], shape[-1])
        mean = x.mean(dim=(1, 3), keepdim=True)
        var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
        x = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            x = x * self.weight[None, :, None] + self.bias[None, :, None]
        return x.reshape(shape)


def spectral_conv1d(in_channels: int, out_channels: int, kernel_size: int = 1, spectral: bool = True,
                    **kwargs: Any) -> nn.Conv1d:
    """Conv1d whose weight is divided by its largest singular value (Miyato et al. 2018, eq. 8): torch's
    ``spectral_norm`` hook, 1 power iteration per training forward, keys ``weight_orig/_u/_v``."""
    conv = nn.Conv1d(in_channels, out_channels, kernel_size, **kwargs)
    return nn.utils.spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0) if spectral else conv


class ResidualBlock(nn.Module):
    """(fn(x) + x)/√2 (StyleGAN-T discriminator residual, variance preserving)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return (self.fn(x) + x) / math.sqrt(2)


def conv_norm_act(channels: int, kernel_size: int, spectral: bool) -> nn.Sequential:
    """SNConv1d(C, C, k) → BatchNormLocal → LeakyReLU(0.2); k > 1 pads circularly along the token sequence."""
    # the official k=9 conv wraps around the flattened token sequence
    pad = {"padding": kernel_size // 2, "padding_mode": "circular"} if kernel_size > 1 else {}
    conv = spectral_conv1d(channels, channels, kernel_size, spectral, **pad)
    return nn.Sequential(conv, BatchNormLocal(channels), nn.LeakyReLU(0.2))


def dino_head(channels: int, kernel_size: int = 9, spectral: bool = True) -> nn.Sequential:
    """One discriminator head on (B, C, L) tokens → (B, 1, L) logits (StyleGAN-T heads; RAE App. E)."""
    return nn.Sequential(
        conv_norm_act(channels, 1, spectral),
        ResidualBlock(conv_norm_act(channels, kernel_size, spectral)),
        spectral_conv1d(channels, 1, 1, spectral),
    )


class DinoDiscriminator(nn.Module):
    """RAE stage-1 discriminator (RAE App. E; official ``DinoDiscriminator`` with ``DinoDisc`` heads).

    ``forward(x)``: images (B, 3, H, W) in [−1, 1] → logits (B, n_heads·L), the per-head token logits
    concatenated (5·784 = 3920 for S/8 at 224 px). The official ``D(fake, real)`` is ``D(fake)`` then
    ``D(real)``: in train mode each call first runs one spectral-norm power iteration.

    The frozen backbone is held outside the module tree (as the official tuple ``dino_proxy``), so it is not
    in ``state_dict``/``parameters`` — only the heads train and checkpoint — but ``.to()``/``.half()`` still
    move it. ``backbone_checkpoint`` is a DINO ViT state dict or a path to one (the released DINO ViT-S/8);
    ``None`` keeps a random backbone (tests and tiny configs only).
    """

    def __init__(
        self,
        recipe: str | Mapping[str, Any] = "S_8",
        kernel_size: int = 9,
        key_depths: Sequence[int] | None = None,
        backbone_checkpoint: str | Path | Mapping[str, Tensor] | None = None,
        spectral_norm: bool = True,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        if isinstance(recipe, str):
            if recipe not in DINO_RECIPES:
                raise ValueError(f"unknown DINO recipe {recipe!r}; known: {sorted(DINO_RECIPES)} (or pass a dict)")
            recipe = DINO_RECIPES[recipe]
        spec = dict(recipe)
        if key_depths is not None:
            spec["key_depths"] = tuple(key_depths)
        unknown = set(spec) - {"depth", "key_depths", "norm_eps", "patch_size", "in_chans", "embed_dim", "num_heads",
                               "mlp_ratio"}
        if unknown:
            raise ValueError(f"unknown DINO recipe keys: {sorted(unknown)}")
        backbone = DinoViT(image_size=image_size, **spec)
        if backbone_checkpoint is not None:
            load_dino_backbone(backbone, backbone_checkpoint)
        backbone.requires_grad_(False).eval()
        self._backbone = (backbone,)  # a tuple hides it from state_dict / parameters / optimizers
        self.heads = nn.ModuleList(dino_head(backbone.embed_dim, kernel_size, spectral_norm)
                                   for _ in range(backbone.num_taps))

    @property
    def backbone(self) -> DinoViT:
        return self._backbone[0]

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DinoDiscriminator:  # type: ignore[override]
        super()._apply(fn, recurse)
        self.backbone._apply(fn, recurse)  # device / dtype moves reach the hidden backbone
        return self

    def forward(self, x: Tensor) -> Tensor:
        taps = self.backbone(x)
        return torch.cat([head(tap).reshape(x.shape[0], -1) for head, tap in zip(self.heads, taps)], dim=1)


# ----------------------------------------------------------------------------------------------- PatchGAN


class PatchGANDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017; VQGAN ``NLayerDiscriminator``) with spectral norm instead of BatchNorm
    (SpeedDiff supp. A.2.2): SNConv4×4/2 → LReLU, (num_layers − 1)× [SNConv4×4/2 → LReLU] with channels
    doubling up to 8·base, SNConv4×4/1 → LReLU, SNConv4×4/1 → 1 logit per patch.

    ``forward(x)``: images (B, C, H, W) in [−1, 1] → logits (B, 1, H', W'). Conv weights start at N(0, 0.02)
    as in VQGAN; without BatchNorm every conv has a bias. Spectral norm is the ``parametrizations`` form: 15
    power iterations at construction, so σ is already accurate for an eval-mode forward (the generator loss
    scores fakes with the discriminator in eval mode; the hook form would start from random u, v and give
    logits in the 1e5s), then one per training forward.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        widths = [in_channels] + [base_channels * min(2 ** i, 8) for i in range(num_layers + 1)]
        layers: list[nn.Module] = []
        for i in range(num_layers + 1):
            stride = 2 if i < num_layers else 1
            layers += [self._conv(widths[i], widths[i + 1], stride), nn.LeakyReLU(0.2)]
        layers.append(self._conv(widths[-1], 1, 1))
        self.main = nn.Sequential(*layers)

    @staticmethod
    def _conv(cin: int, cout: int, stride: int) -> nn.Conv2d:
        conv = nn.Conv2d(cin, cout, kernel_size=4, stride=stride, padding=1)
        nn.init.normal_(conv.weight, 0.0, 0.02)
        nn.init.zeros_(conv.bias)
        return nn.utils.parametrizations.spectral_norm(conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


__all__ = [
    "DINO_RECIPES",
    "BatchNormLocal",
    "DinoBlock",
    "DinoDiscriminator",
    "DinoViT",
    "PatchGANDiscriminator",
    "ResidualBlock",
    "conv_norm_act",
    "dino_head",
    "load_dino_backbone",
    "spectral_conv1d",
]
