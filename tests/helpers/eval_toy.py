"""Small stand-ins for evaluation tests: a toy recipe whose samples depend on labels, noise and
weights; a labelled uint8 image dataset; tiny Inception / DINOv2 networks with the real interfaces."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from speedrun_diffusion.callbacks.features import DINOv2Features, InceptionFeatures
from tests.helpers.toy_recipe import ToyRecipe

RES = 8  # image side of the toy samples


class EvalToyRecipe(ToyRecipe):
    """`ToyRecipe` on images: samples = tanh(0.7 ε + 0.3 (label − 1) + 0.1 net(1)), so they move with the weights."""

    num_classes = 3

    def compute_losses(self, batch, generator=None):
        loss = (self.net(batch["image"].flatten(1)[:, :6]) - batch["target"]).pow(2).mean()
        return {"loss": loss, "mse": loss}

    @torch.no_grad()
    def sample(self, labels: Tensor, generator=None, progress=False, **kwargs) -> Tensor:
        n = len(labels)
        noise = torch.randn(n, 3, RES, RES, generator=generator, device=self.device)
        shift = self.net(torch.ones(n, 6, device=self.device)).view(-1, 1, 1, 1)
        return torch.tanh(0.7 * noise + 0.3 * (labels.to(self.device).view(-1, 1, 1, 1).float() - 1) + 0.1 * shift)


class ToyImages(Dataset):
    """uint8 images mapped to [-1, 1] by x / 127.5 − 1 (the datamodule contract), with labels and targets."""

    def __init__(self, n: int = 24, seed: int = 3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.uint8 = torch.randint(0, 256, (n, 3, RES, RES), generator=g, dtype=torch.uint8)
        self.target = torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.uint8)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.uint8[i].float() / 127.5 - 1, "target": self.target[i], "label": torch.tensor(i % 3)}


def image_loader(n: int = 24, batch_size: int = 8) -> DataLoader:
    return DataLoader(ToyImages(n), batch_size=batch_size, shuffle=False)


class TinyInception(nn.Module):
    """Inception-shaped stand-in: uint8 → (pool (N, 16), logits (N, 10)); ``Mixed_6d.branch1x1`` gives (N, 8, 4, 4).

    A 4x4 map (not Inception's 17x17) keeps the sFID width at 4*4*7 = 112, so the sFID matrix square root stays cheap."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.Mixed_6d = nn.Module()
        self.Mixed_6d.branch1x1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.Linear(8, 16)
        self.fc = nn.Linear(16, 10, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate((x.float() - 128) / 128, size=(4, 4), mode="bilinear", align_corners=False)
        h = self.Mixed_6d.branch1x1(x)
        pool = torch.relu(self.pool(h.mean((2, 3)))) + h.std((2, 3)).mean(1, keepdim=True)
        return pool, self.fc(pool)


class TinyEncoder(nn.Module):
    """DINOv2-shaped stand-in: normalised (N, 3, R, R) → (N, 12)."""

    num_features = 12

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.proj = nn.Conv2d(3, 12, 4, stride=4)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.proj(x)).mean((2, 3)) * 3


def tiny_inception() -> InceptionFeatures:
    return InceptionFeatures(network=TinyInception(), feature_dims={"pool_3": 16, "logits_unbiased": 10,
                                                                    "spatial": 112})


def tiny_dinov2() -> DINOv2Features:
    return DINOv2Features(network=TinyEncoder(), resolution=16)
