"""`LatentEncoder`: the LightningModule of a latent-caching ``predict`` run (reference/srdit/README "Data pipeline").

SR-DiT pre-computes one INVAE posterior **sample** per training image once and trains on it (RAE stage 2
likewise trains on frozen encoder latents). ``predict_step`` encodes a batch of images in [−1, 1] with a
frozen tokenizer and returns ``{"latent", "label"}`` (plus ``"repa_target"`` when a target encoder is given,
for runs that pre-compute the DINOv2 targets too); ``callbacks.LatentWriter`` stores them in shards that
``datamodules.LatentDataModule`` reads back.

    speedrun-diffusion predict -c configs/srdit/cache_latents_256.yaml --return_predictions false

Latents are stored raw (unscaled); ``latent_scale`` is recorded in the manifest so the training recipe can
check it multiplies by the same factor (0.3099 for INVAE).
"""
from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.checkpoints.srdit import load_invae_weights

LatentMode = Literal["sample", "mean"]


def encode_latents(tokenizer: nn.Module, images: Tensor, mode: LatentMode = "sample",
                   generator: torch.Generator | None = None) -> Tensor:
    """Raw latents of ``images``: a posterior sample (SR-DiT's cached latents) or the posterior mean.

    A tokenizer with ``posterior(images)`` (Gaussian VAEs: INVAE) honours ``mode``; any other tokenizer (a
    deterministic encoder such as RAE's) is called as ``encode(images)``.
    """
    if mode not in ("sample", "mean"):
        raise ValueError(f"latent mode must be 'sample' or 'mean', got {mode!r}")
    if hasattr(tokenizer, "posterior"):
        posterior = tokenizer.posterior(images)
        return posterior.sample(generator=generator) if mode == "sample" else posterior.mode()
    return tokenizer.encode(images)


class LatentEncoder(L.LightningModule):
    """Frozen ``tokenizer`` (+ optional ``target_encoder``) for ``predict`` runs that cache latents.

    Args:
        tokenizer: module with ``encode`` (and ``posterior`` for ``mode``), e.g. ``networks.INVAE``.
        mode: "sample" (official SR-DiT: one posterior sample per image) or "mean".
        target_encoder: also return its tokens as ``repa_target`` (pre-computed DINOv2 targets).
        tokenizer_weights: local INVAE file loaded strictly into ``tokenizer`` (official keys).
        tokenizer_name: recorded in the manifest (default: the tokenizer's class name).
        latent_scale: the factor the diffusion model multiplies latents by (manifest ``scale``; default: the
            tokenizer's ``scaling_factor`` if it has one, else 1).
        seed: seeds the posterior noise of each batch from (seed, rank, batch index): reproducible caches.
    """

    def __init__(
        self,
        tokenizer: nn.Module,
        mode: LatentMode = "sample",
        target_encoder: nn.Module | None = None,
        tokenizer_weights: str | None = None,
        tokenizer_name: str | None = None,
        latent_scale: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in ("sample", "mean"):
            raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
        if tokenizer_weights is not None:
            load_invae_weights(tokenizer, tokenizer_weights)
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.target_encoder = target_encoder.eval().requires_grad_(False) if target_encoder is not None else None
        self.mode = mode
        self.tokenizer_name = tokenizer_name or type(tokenizer).__name__
        self.latent_scale = float(latent_scale if latent_scale is not None else getattr(tokenizer, "scaling_factor", 1.0))
        self.seed = seed

    def train(self, mode: bool = True) -> LatentEncoder:
        return super().train(False)  # frozen modules only: always eval mode

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        images = batch["image"]
        generator = torch.Generator(device=images.device).manual_seed(
            (self.seed * 1_000_003 + batch_idx) * 1_009 + self.global_rank)
        out = {"latent": encode_latents(self.tokenizer, images, self.mode, generator).float(),
               "label": batch["label"]}
        if self.target_encoder is not None:
            out["repa_target"] = self.target_encoder(images).float()
        return out


__all__ = ["LatentEncoder", "LatentMode", "encode_latents"]
