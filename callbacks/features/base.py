"""`FeatureExtractor`: the one interface behind which every evaluation network sits.

An extractor is an ``nn.Module`` that takes uint8 RGB images, NCHW, any size (each extractor
resizes as its reference does), and returns ``{feature name: (N, D) float32}``. ``feature_dims``
names what it produces, so a metric can be wired to a feature without running the network.
Weights come from the library's own loader (torch-fidelity, timm) or a local file read without
arbitrary pickles (safetensors, or ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

from pathlib import Path

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


def load_weights(path: str | Path, what: str) -> dict[str, Tensor]:
    """A state dict from a local ``.safetensors`` or torch file (tensors only, no arbitrary pickles)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found at {str(path)!r} (give an existing local file, or None to "
                                f"let the library download them)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TypeError(f"{what} weights at {str(path)!r} are not a state dict ({type(state).__name__})")
    return state


def freeze(module: nn.Module) -> nn.Module:
    """Evaluation mode, no gradients."""
    return module.eval().requires_grad_(False)
