"""A tiny `DiffusionRecipe` (regression with a block-structured net) for callback tests, plus helpers
that record the parameter trajectory; used in-process and by the 2-process FSDP2 script."""
from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe

GLOBAL_BATCH = 8


class ToyNet(nn.Module):
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) for _ in range(3))
        self.head = nn.Linear(dim, 1)
        self.register_buffer("offset", torch.tensor(0.5))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x).squeeze(-1) + self.offset


class ToyRecipe(DiffusionRecipe):
    num_classes = 2

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__(optimizer=OptimizerConfig(lr=lr))
        torch.manual_seed(123)
        self.net = ToyNet()

    def compute_losses(self, batch, generator=None):
        loss = (self.net(batch["image"]) - batch["target"]).pow(2).mean()
        return {"loss": loss, "mse": loss}

    @torch.no_grad()
    def sample(self, labels: Tensor, generator=None, progress=False, **kwargs) -> Tensor:
        return torch.tanh(self.net(torch.ones(len(labels), 6, device=self.device))).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)


class ToyData(Dataset):
    def __init__(self, n: int = GLOBAL_BATCH) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.x[i], "target": self.y[i], "label": torch.tensor(i % 2)}


def toy_loader(world_size: int = 1) -> DataLoader:
    # every step sees the whole data set split evenly over ranks: same global batch as one process
    return DataLoader(ToyData(), batch_size=GLOBAL_BATCH // world_size, shuffle=False)


def full_parameters(module: nn.Module) -> dict[str, Tensor]:
    """Full (gathered) copies of every floating parameter; collective under FSDP2."""
    out = {}
    for name, p in module.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = t.detach().cpu().clone()
    return out


class RecordTrajectory(L.Callback):
    """Parameters of ``pl_module.net`` at fit start and after every optimizer step."""

    def __init__(self) -> None:
        self.trajectory: list[dict[str, Tensor]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.trajectory = [full_parameters(pl_module.net)]

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.trajectory.append(full_parameters(pl_module.net))


def analytic_ema(trajectory: list[dict[str, Tensor]], decay: float, warmup: bool = False) -> dict[str, Tensor]:
    """e_0 = θ_0, e_n = d_n·e_{n−1} + (1 − d_n)·θ_n with d_n = min(d, (1+n−1)/(10+n−1)) under warm-up."""
    ema = {k: v.double().clone() for k, v in trajectory[0].items()}
    for n, params in enumerate(trajectory[1:]):
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        for k in ema:
            ema[k] = d * ema[k] + (1 - d) * params[k].double()
    return ema
