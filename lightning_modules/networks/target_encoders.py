"""`DINOv2Targets`: the frozen DINOv2 ViT-B/14 that gives SR-DiT its REPA / REG targets (SR-DiT Sec. 3.1–3.2,
reference/srdit/README "Data pipeline").

The official pipeline (REPA's ``preprocess_raw_image`` + ``load_encoders`` for ``dinov2-vit-b``) computes the
targets on the fly from the stored 256² image:

    x = image / 255 → (x − ImageNet mean) / ImageNet std → bicubic resize to 224 (448 at 512 px)
    tokens = DINOv2-B/14 (no registers; position embedding resampled to the 16×16 (32×32) latent grid)
    targets = [x_norm_clstoken; x_norm_patchtokens]        (B, 1 + 256, 768), after the final LayerNorm

``targets[:, 0]`` is also the clean REG cls token. The official code resamples the position embedding once
with timm's ``resample_abs_pos_embed`` (bicubic, antialiased); building the timm model at the target input
size applies that same rule to the pretrained table, so timm's ``vit_base_patch14_dinov2`` gives the official
function. This is not the KDD feature network of ``callbacks/features/dinov2.py`` (ViT-L/14, PIL resize of
uint8 images, CLS only, the hub's non-antialiased position rule): only the weight reader (``weights.py``) is shared.

A tiny random encoder of the same architecture (``random_weights=True`` with ``model_kwargs`` such as
``{patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}``) stands in for it in tiny configs and tests; any
module mapping normalised (B, 3, R, R) images to (B, 1 + N, D) tokens can also be injected as ``encoder``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.weights import read_state_dict

DINOV2_B14 = "vit_base_patch14_dinov2.lvd142m"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def timm_dinov2_tokens(
    model_name: str = DINOV2_B14,
    weights: str | Path | None = None,
    random_weights: bool = False,
    resolution: int = 224,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm DINOv2 built for ``resolution`` input (position embedding resampled to resolution / patch).

    ``weights=None`` loads the pretrained weights through timm (its Hugging Face cache); a local file may hold
    timm or original ``dinov2_vitb14`` keys. ``random_weights`` skips loading (tiny encoders, benchmarks).
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = None
    if weights is not None and not random_weights:
        state = read_state_dict(weights, f"DINOv2 target encoder ({model_name}) weights")  # fails before building
    pretrained = weights is None and not random_weights
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=0, img_size=resolution,
                              **(model_kwargs or {}))
    if state is not None:
        model.load_state_dict(checkpoint_filter_fn(state, model))  # resamples pos_embed as timm / REPA do
    return model


class DINOv2Targets(nn.Module):
    """Images in [−1, 1] (B, 3, H, W) → normalised DINOv2 tokens [cls; patches] (B, 1 + N, D), frozen.

    Args:
        weights: local weights file (timm or hub keys); None loads the pretrained weights through timm.
        resolution: encoder input side: 224 at 256 px, 448 at 512 px (14 × the latent grid).
        random_weights: the architecture with random weights (tiny configs, benchmarks; no download).
        model_name / model_kwargs: the timm model and constructor overrides (e.g. a tiny depth / width).
        encoder: inject any module mapping normalised (B, 3, R, R) to (B, 1 + N, D) tokens instead.
    """

    def __init__(
        self,
        weights: str | None = None,
        resolution: int = 224,
        random_weights: bool = False,
        model_name: str = DINOV2_B14,
        model_kwargs: dict[str, Any] | None = None,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.encoder = encoder if encoder is not None else timm_dinov2_tokens(
            model_name, weights, random_weights, resolution, model_kwargs)
        self.encoder.eval().requires_grad_(False)
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return int(getattr(self.encoder, "embed_dim", 0) or getattr(self.encoder, "num_features", 0))

    def preprocess(self, images: Tensor) -> Tensor:
        """[−1, 1] → x/255 (the uint8 image), ImageNet normalisation, then bicubic resize (REPA's order)."""
        x = (images.float() + 1) / 2
        x = (x - self.mean) / self.std
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic")
        return x

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DINOv2Targets expects images (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        x = self.preprocess(images)
        tokens = getattr(self.encoder, "forward_features", self.encoder)(x)  # timm: final norm on every token
        if tokens.ndim != 3:
            raise ValueError(f"target encoder must return (B, 1 + N, D) tokens, got {tuple(tokens.shape)}")
        return tokens


__all__ = ["DINOV2_B14", "DINOv2Targets", "timm_dinov2_tokens"]
