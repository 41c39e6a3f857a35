"""LPIPS perceptual distance (Zhang et al. 2018, eq. 1) as used by RAE stage 1 and SpeedDiff (supp. A.2.2).

d(x, y) = Σ_l mean_hw ‖w_l ⊙ (f̂_l(x) − f̂_l(y))‖² with f̂ the channel-normalised features of a frozen
network at 5 taps (VGG16 relu1_2 … relu5_3) and w_l the learned non-negative linear heads
(reference/rae_stage1/README "LPIPS"). Inputs in [−1, 1].

Real use: the ``lpips`` package's VGG16 (torchvision ImageNet weights, ``pretrained=True``) and the v0.1
linear heads shipped inside the package. Tests and tiny configs inject a small feature net (``ConvFeatures``
or any module returning a list of feature maps), since the VGG weights cannot be downloaded offline.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.weights import read_state_dict

VGG16_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS input scaling (x − shift)/scale: [−1, 1] images to the statistics VGG was trained on
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def lpips_vgg16(pretrained: bool = True) -> nn.Module:
    """The ``lpips`` package's VGG16 feature extractor (5 slices), frozen; ImageNet weights via torchvision."""
    import warnings

    from lpips.pretrained_networks import vgg16

    with warnings.catch_warnings():  # torchvision's deprecated ``pretrained=`` argument inside lpips
        warnings.simplefilter("ignore", UserWarning)
        if pretrained:
            return vgg16(requires_grad=False, pretrained=True)
        # random init: build on meta (skips the 120M-parameter classifier lpips drops anyway), then init convs
        with torch.device("meta"):
            net = vgg16(requires_grad=False, pretrained=False)
    net.to_empty(device="cpu")
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    return net


def lpips_linear_weights_path(net: str = "vgg", version: str = "0.1") -> Path:
    """The linear-head weights bundled with the ``lpips`` package (``weights/v0.1/vgg.pth``)."""
    import lpips

    path = Path(inspect.getfile(lpips)).parent / "weights" / f"v{version}" / f"{net}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS linear weights not found: {path}")
    return path


class ConvFeatures(nn.Module):
    """A small VGG-style feature net for tests and tiny configs: per stage [2×2 max-pool except first] →
    (conv3×3 → ReLU) × ``convs_per_stage``; returns every stage's output (``channels`` = ``widths``)."""

    def __init__(self, widths: Sequence[int] = (8, 16, 32), in_channels: int = 3, convs_per_stage: int = 2) -> None:
        super().__init__()
        self.channels = tuple(int(w) for w in widths)
        stages, cin = [], in_channels
        for i, width in enumerate(self.channels):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i > 0 else []
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
                cin = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def normalize_channels(f: Tensor, eps: float = 1e-10) -> Tensor:
    """f / (‖f‖₂ over channels + eps) at every position (LPIPS eq. 1, unit-normalised activations)."""
    return f / (torch.sqrt(torch.sum(f * f, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS(x, y) for images in [−1, 1]; frozen (no parameter requires grad), gradients flow to the inputs.

    ``feature_net=None`` builds the ``lpips`` package VGG16 (``pretrained`` loads torchvision's ImageNet
    weights) and, if ``pretrained``, the package's v0.1 linear heads. An injected ``feature_net`` must return
    a list/tuple of (B, C_l, H_l, W_l) maps; ``channels`` defaults to its ``channels`` attribute. Untrained
    heads start at 1 — the unweighted "baseline" distance of the LPIPS paper (Zhang et al. 2018, Sec. 3).
    """

    def __init__(
        self,
        feature_net: nn.Module | None = None,
        channels: Sequence[int] | None = None,
        pretrained: bool = True,
        linear_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if feature_net is None:
            feature_net, channels = lpips_vgg16(pretrained), VGG16_CHANNELS
            if pretrained and linear_weights is None:
                linear_weights = lpips_linear_weights_path("vgg")
        channels = channels if channels is not None else getattr(feature_net, "channels", None)
        if channels is None:
            raise ValueError("LPIPS: pass `channels` (feature widths) for a feature net without a `channels` attribute")
        self.channels = tuple(int(c) for c in channels)
        self.net = feature_net
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in self.channels)
        for lin in self.lins:
            nn.init.ones_(lin.weight)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        if linear_weights is not None:
            self.load_linear_weights(linear_weights)
        self.requires_grad_(False)
        self.eval()

    def load_linear_weights(self, path: str | Path) -> None:
        """Load ``lin{l}.model.1.weight`` heads (lpips / taming file format) from ``path``."""
        state = read_state_dict(path, "LPIPS linear weights", unwrap=())
        for i, lin in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in state:
                raise KeyError(f"{path}: missing {key}")
            if state[key].shape != lin.weight.shape:
                raise ValueError(f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(lin.weight.shape)}")
            lin.weight.data.copy_(state[key])

    def train(self, mode: bool = True) -> LPIPS:  # type: ignore[override]
        return super().train(False)  # a fixed metric: always eval (official train_stage1 calls lpips.eval())

    def features(self, x: Tensor) -> list[Tensor]:
        """The feature net's taps of a [−1, 1] image after the LPIPS input scaling."""
        out = list(self.net((x - self.shift) / self.scale))
        if len(out) != len(self.lins):
            raise ValueError(f"LPIPS: feature net returned {len(out)} maps for {len(self.lins)} heads")
        return out

    def layer_distances(self, x: Tensor, y: Tensor) -> list[Tensor]:
        """Per-layer terms mean_hw w_l·(f̂_l(x) − f̂_l(y))², each (B, 1, 1, 1); their sum is LPIPS."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two (B, 3, H, W) images, got {tuple(x.shape)} and {tuple(y.shape)}")
        fx, fy = self.features(x), self.features(y)
        return [lin((normalize_channels(a) - normalize_channels(b)) ** 2).mean(dim=(2, 3), keepdim=True)
                for lin, a, b in zip(self.lins, fx, fy)]

    def forward(self, x: Tensor, y: Tensor, reduction: Literal["mean", "none"] = "mean") -> Tensor:
        """Batch mean of LPIPS(x, y) (``reduction="none"``: per image, (B, 1, 1, 1))."""
        terms = self.layer_distances(x, y)
        d = sum(terms[1:], terms[0])
        if reduction == "none":
            return d
        if reduction == "mean":
            return d.mean()
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


__all__ = [
    "ConvFeatures",
    "LPIPS",
    "LPIPS_SCALE",
    "LPIPS_SHIFT",
    "VGG16_CHANNELS",
    "lpips_linear_weights_path",
    "lpips_vgg16",
    "normalize_channels",
]
