"""`DiffusionRecipe`: the thin LightningModule base shared by every recipe.

It removes exactly the code every recipe would otherwise repeat: the optimizer and its LR schedule
from config (AdamW, linear warm-up, then constant or cosine, as the papers train), logging of every
loss term, FSDP2 sharding of the denoiser's blocks in ``configure_model``, and the ``sample()``
surface that callbacks call (DESIGN: callbacks talk to modules only through ``net`` and
``sample``). The math stays in plain functions; a recipe implements ``compute_losses`` and
``sample``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

LRSchedule = Literal["constant", "cosine"]


def warmup_schedule_factor(
    step: int, warmup_steps: int, total_steps: int | None, schedule: LRSchedule, min_lr_ratio: float
) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, then constant or a cosine to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or not total_steps or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class DiffusionRecipe(L.LightningModule):
    """Base class: optimizer + schedule, loss logging, FSDP2 ``configure_model``, ``sample`` surface.

    Subclasses set ``self.net`` (the denoiser) and implement ``compute_losses(batch, generator)``
    returning a dict whose ``"loss"`` entry is the total to minimise.
    """

    net: nn.Module

    def __init__(
        self,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        adam_eps: float = 1e-8,
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        min_lr: float = 0.0,
        fsdp_param_dtype: Literal["float32", "bfloat16"] | None = None,
    ) -> None:
        super().__init__()
        self.lr = lr
        self.betas = tuple(betas)
        self.weight_decay = weight_decay
        self.adam_eps = adam_eps
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.min_lr = min_lr
        self.fsdp_param_dtype = fsdp_param_dtype
        self.tokenizer: nn.Module | None = None  # frozen encode/decode pair of latent recipes (DESIGN contract)
        self.latent_scale = 1.0

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    # ---------------------------------------------------------------- frozen tokenizer / encoders
    def frozen_modules(self) -> list[nn.Module]:
        """Pretrained modules that are never trained and stay in eval mode (tokenizer, target encoders)."""
        return [self.tokenizer] if self.tokenizer is not None else []

    def freeze(self) -> None:
        """Stop gradients into ``frozen_modules`` and put them in eval mode."""
        for module in self.frozen_modules():
            module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> DiffusionRecipe:
        super().train(mode)
        for module in self.frozen_modules():  # Lightning's .train() must not switch them back
            module.eval()
        return self

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] → diffusion space: tokenizer latents × ``latent_scale`` (identity on pixels)."""
        if self.tokenizer is None:
            return images
        return self.tokenizer.encode(images) * self.latent_scale

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """Diffusion space → images in [-1, 1] (tokenizer.decode(z / latent_scale), clamped)."""
        if self.tokenizer is None:
            return x0.clamp(-1, 1)
        return self.tokenizer.decode(x0 / self.latent_scale).clamp(-1, 1)

    # ---------------------------------------------------------------- losses and logging
    def compute_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    def log_losses(self, losses: dict[str, Tensor], stage: str, batch_size: int) -> None:
        """One TensorBoard scalar per loss term (DESIGN: logs every loss term)."""
        scalars = {f"{stage}/{name}": value.detach().float() for name, value in losses.items() if name != "loss"}
        self.log_dict(scalars, batch_size=batch_size, sync_dist=stage != "train", prog_bar=False)
        self.log(f"{stage}/loss", losses["loss"].detach().float(), batch_size=batch_size, prog_bar=True,
                 sync_dist=stage != "train")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch)
        self.log_losses(losses, "train", batch_size=len(batch["label"]))
        return losses["loss"]

    def _fixed_generator(self, batch_idx: int) -> torch.Generator:
        # the same noise and t for the same validation batch every epoch, so val curves are comparable
        return torch.Generator(device=self.device).manual_seed(10_007 * (batch_idx + 1) + self.global_rank)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch, generator=self._fixed_generator(batch_idx))
        self.log_losses(losses, "val", batch_size=len(batch["label"]))
        return losses["loss"]

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch, generator=self._fixed_generator(batch_idx))
        self.log_losses(losses, "test", batch_size=len(batch["label"]))
        return losses["loss"]

    # ---------------------------------------------------------------- sampling surface
    @torch.no_grad()
    def sample(self, labels: Tensor, **kwargs: Any) -> Tensor:
        """Images in [-1, 1], NCHW, for int64 ``labels`` (``num_classes`` = unconditional)."""
        raise NotImplementedError

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.sample(batch["label"])

    # ---------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        frozen = {id(p) for m in self.frozen_modules() for p in m.parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in frozen)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.trainable_parameters(), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, eps=self.adam_eps
        )
        total = None
        if self.lr_schedule == "cosine" and self._trainer is not None:
            total = int(self.trainer.estimated_stepping_batches)
        ratio = self.min_lr / self.lr if self.lr > 0 else 0.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_schedule_factor(step, self.warmup_steps, total, self.lr_schedule, ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- sharding
    def shard_units(self) -> list[nn.Module]:
        """Modules wrapped by their own ``fully_shard`` (one FSDP unit per transformer block)."""
        blocks = getattr(self.net, "blocks", None)
        return list(blocks) if blocks is not None else []

    def configure_model(self) -> None:
        """FSDP2: ``fully_shard`` each block, then the denoiser, on the data-parallel mesh (ModelParallelStrategy)."""
        mesh = self.device_mesh
        if mesh is None:
            return
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        if isinstance(self.net, FSDPModule):  # configure_model runs again for validate/test after fit
            return
        dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
        param_dtype = getattr(torch, self.fsdp_param_dtype) if self.fsdp_param_dtype else None
        # compute in bf16 if asked, but always reduce gradients in fp32
        policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for unit in self.shard_units():
            fully_shard(unit, mesh=dp_mesh, mp_policy=policy)
        fully_shard(self.net, mesh=dp_mesh, mp_policy=policy)
