"""`FeatureExtractor`: the one interface behind which every evaluation network sits.

An extractor is an ``nn.Module`` that takes uint8 RGB images, NCHW, any size (each extractor
resizes as its reference does), and returns ``{feature name: (N, D) float32}``. ``feature_dims``
names what it produces, so a metric can be wired to a feature without running the network.
Weights come from the library's own loader (torch-fidelity, timm) or a local file read without
arbitrary pickles (``lightning_modules.weights.read_state_dict``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from speedrun_diffusion.callbacks.image_protocol import check_uint8_images


class FeatureExtractor(nn.Module):
    """Frozen network: uint8 NCHW RGB images → ``{name: (N, D) float32}`` (see ``feature_dims``)."""

    feature_dims: dict[str, int]

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        check_uint8_images(images)
        return self.extract(images)

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")


def freeze(module: nn.Module) -> nn.Module:
    """Evaluation mode, no gradients."""
    return module.eval().requires_grad_(False)
