"""`DINOv2Features`: dgm-eval's DINOv2 ViT-L/14 encoder for KDD, built with timm (metrics README §2.7).

dgm-eval ``DINOv2Encoder``: ``torch.hub`` ``dinov2_vitl14`` (no registers), eval mode, feature =
the forward output = CLS token after the final LayerNorm (1024-d). Preprocessing: each uint8 image
resized to 224x224 by PIL bicubic (antialiased, rounded back to uint8, aspect ratio not kept),
``ToTensor`` (/255), ``Normalize`` with the ImageNet mean/std, no crop.

timm's ``vit_large_patch14_dinov2.lvd142m`` holds the same weights at 518x518 (37x37 positions).
The hub model adapts the position embedding to 224 input at every forward by bicubic interpolation
*without* antialiasing and with scale factor (16 + 0.1)/37 (DINOv2 ``interpolate_pos_encoding``,
``interpolate_offset=0.1``); timm's own resampling antialiases, which is not the same, so the
embedding is converted here once with the hub's rule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.callbacks.features.base import FeatureExtractor, freeze
from speedrun_diffusion.lightning_modules.weights import read_state_dict

DINOV2_MODEL = "vit_large_patch14_dinov2.lvd142m"
DGM_RESOLUTION = 224  # dgm-eval Resize((224, 224), BICUBIC)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_INTERPOLATE_OFFSET = 0.1  # DINOv2 hub models: interpolate_offset=0.1, interpolate_antialias=False


def hub_interpolate_pos_embed(pos_embed: Tensor, grid: int, num_prefix_tokens: int = 1) -> Tensor:
    """DINOv2 ``interpolate_pos_encoding`` for a square ``grid``: (1, P + M*M, C) → (1, P + grid*grid, C)."""
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    m = int(round(patches.shape[1] ** 0.5))
    if m * m != patches.shape[1]:
        raise ValueError(f"position embedding of {patches.shape[1]} patches is not a square grid")
    if m == grid:
        return pos_embed
    scale = float(grid + HUB_INTERPOLATE_OFFSET) / m
    dim = patches.shape[-1]
    resized = F.interpolate(patches.float().reshape(1, m, m, dim).permute(0, 3, 1, 2), scale_factor=(scale, scale),
                            mode="bicubic", antialias=False)
    if resized.shape[-2:] != (grid, grid):
        raise RuntimeError(f"position embedding resized to {tuple(resized.shape[-2:])}, expected {(grid, grid)}")
    resized = resized.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat([prefix.float(), resized], dim=1).to(pos_embed.dtype)


def timm_dinov2(weights: str | Path | None = None, random_weights: bool = False, model_name: str = DINOV2_MODEL,
                resolution: int = DGM_RESOLUTION, **overrides: object) -> nn.Module:
    """timm DINOv2 returning the normalised CLS token, position embedding converted to ``resolution``.

    ``weights=None`` loads through timm (Hugging Face hub cache); a path may hold timm or original
    hub (``dinov2_vitl14_pretrain.pth``) keys; ``overrides`` (depth, embed_dim, ...) shrink it for tests.
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    pretrained = weights is None and not random_weights
    # read the file before building a 300M-parameter model, so a bad path fails at once
    state = read_state_dict(weights, f"DINOv2 ({model_name}) weights") if weights is not None and not random_weights else None
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **overrides)
    if state is not None:
        model.load_state_dict(checkpoint_filter_fn(state, model))
    native = model.pos_embed.detach().clone()
    patch = model.patch_embed.patch_size[0]
    model.set_input_size(img_size=(resolution, resolution))
    with torch.no_grad():
        model.pos_embed.copy_(hub_interpolate_pos_embed(native, resolution // patch, model.num_prefix_tokens))
    return freeze(model)


def pil_bicubic_resize(images: Tensor, size: int) -> Tensor:
    """uint8 NCHW → uint8 NCHW ``size``x``size`` through PIL ``Image.resize(BICUBIC)`` (torchvision Resize on PIL)."""
    from PIL import Image

    out = []
    for image in images.permute(0, 2, 3, 1).cpu().numpy():
        resized = Image.fromarray(image, mode="RGB").resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(resized).copy()))
    return torch.stack(out).permute(0, 3, 1, 2)


class DINOv2Features(FeatureExtractor):
    """uint8 NCHW → ``{"dinov2": (N, D)}`` (D = 1024 for ViT-L/14) with dgm-eval's preprocessing.

    Args:
        weights: local weights file (timm or hub keys); None loads through timm.
        network: inject any module mapping normalised (N, 3, R, R) float32 to (N, D).
        resize: "pil" (dgm-eval exact) or "torch" (``F.interpolate`` bicubic antialias on the device:
            close to, not identical with, PIL).
        random_weights: the real architecture with random weights (benchmarks).
        feature_dim: width of an injected network's output (default: its ``num_features``, else 1024).
    """

    def __init__(self, weights: str | Path | None = None, network: nn.Module | None = None,
                 resize: Literal["pil", "torch"] = "pil", resolution: int = DGM_RESOLUTION,
                 random_weights: bool = False, model_name: str = DINOV2_MODEL, feature_dim: int | None = None) -> None:
        super().__init__()
        if resize not in ("pil", "torch"):
            raise ValueError(f"resize must be 'pil' or 'torch', got {resize!r}")
        self.network = freeze(network) if network is not None else timm_dinov2(weights, random_weights, model_name,
                                                                                resolution)
        self.resize = resize
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        dim = getattr(self.network, "num_features", None) or getattr(self.network, "embed_dim", None)
        self.feature_dims = {"dinov2": int(feature_dim or dim or 1024)}

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 NCHW → normalised float32 NCHW at ``resolution`` (dgm-eval transform)."""
        if self.resize == "pil":
            x = pil_bicubic_resize(images, self.resolution).to(self.mean.device).float() / 255
        else:
            x = F.interpolate(images.to(self.mean.device).float(), size=(self.resolution, self.resolution),
                              mode="bicubic", antialias=True, align_corners=False).clamp(0, 255).round() / 255
        return (x - self.mean) / self.std

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        return {"dinov2": self.network(self.preprocess(images)).float()}
