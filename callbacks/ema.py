"""`EMA`: exponential moving average of the denoiser's weights, sharding-agnostic.

θ_ema ← d·θ_ema + (1 − d)·θ after every ``update_every``-th optimizer step (d = 0.9999 in SiT /
SR-DiT / SiD2 / SpeedDiff, 0.9995 in RAE). With ``warmup`` the decay is min(d, (1 + n)/(10 + n))
for the n-th update, the usual warm-up that lets early averages forget the random initialisation.

The shadow weights live in the callback, one tensor per parameter of ``pl_module.net`` (DESIGN
contract). Under FSDP2 each rank averages only its own shard (the shard of a DTensor parameter),
so memory and work are split like the model. Checkpoints hold full tensors (gathered on save,
re-sliced on load), so a checkpoint resumes on any number of ranks and under any strategy; for
models too large to gather once per save, use the sharded model checkpoint for the weights and
``export_safetensors`` for the EMA.

The EMA weights are swapped into the network for validation, testing and prediction (and by
``EMA.swapped`` for sampling callbacks) and swapped back afterwards.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - very old torch
    DTensor = None  # type: ignore[assignment,misc]


def _local(t: Tensor) -> Tensor:
    """The tensor this rank owns: a DTensor's local shard, else the tensor itself."""
    return t.to_local() if DTensor is not None and isinstance(t, DTensor) else t


def ema_decay(decay: float, num_updates: int, warmup: bool) -> float:
    """Decay of the ``num_updates``-th update: d, or min(d, (1 + n)/(10 + n)) with warm-up."""
    return min(decay, (1 + num_updates) / (10 + num_updates)) if warmup else decay


class EMA(L.Callback):
    """Shadow weights of ``pl_module.net``: updated after optimizer steps, swapped in for evaluation.

    Args:
        decay: per-update decay d (paper values 0.9999 / 0.9995).
        warmup: use min(d, (1 + n)/(10 + n)) for the n-th update.
        update_every: update after every N-th optimizer step (the decay applies per update).
        start_step: first optimizer step that updates; before it the shadow copies the weights.
        swap_for_eval: evaluate validation / test / predict with the EMA weights.
        export_path: if set, write the EMA weights (safetensors) there at the end of fit.
        bundle_path: if set, write a ready-to-sample bundle of the recipe with the EMA weights there at the end of
            fit (``serving.save_pretrained``: recipe.json + weights.safetensors; ``load_pretrained`` reads it).
    """

    def __init__(
        self,
        decay: float = 0.9999,
        warmup: bool = False,
        update_every: int = 1,
        start_step: int = 0,
        swap_for_eval: bool = True,
        export_path: str | None = None,
        bundle_path: str | None = None,
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.decay = decay
        self.warmup = warmup
        self.update_every = update_every
        self.start_step = start_step
        self.swap_for_eval = swap_for_eval
        self.export_path = export_path
        self.bundle_path = bundle_path
        self.num_updates = 0
        self._shadow: dict[str, Tensor] | None = None  # name -> local shard (or whole tensor)
        self._pending: dict[str, Any] | None = None  # a loaded state waiting for the (sharded) model
        self._backup: dict[str, Tensor] | None = None
        self._last_step = -1

    # ---------------------------------------------------------------- lookup for other callbacks
    @staticmethod
    def find(trainer: L.Trainer) -> EMA | None:
        """The trainer's EMA callback, if any (used by sampling / evaluation callbacks)."""
        return next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)

    # ---------------------------------------------------------------- shadow management
    @staticmethod
    def _parameters(pl_module: L.LightningModule) -> dict[str, nn.Parameter]:
        net = getattr(pl_module, "net", None)
        if net is None:
            raise AttributeError(f"EMA needs `pl_module.net` (DESIGN contract); {type(pl_module).__name__} has none")
        return {name: p for name, p in net.named_parameters() if p.is_floating_point()}

    def _ensure_shadow(self, pl_module: L.LightningModule) -> None:
        if self._shadow is None:
            self._shadow = {name: _local(p).detach().clone() for name, p in self._parameters(pl_module).items()}
        if self._pending is not None:
            self._apply_state(pl_module, self._pending)
            self._pending = None

    def _apply_state(self, pl_module: L.LightningModule, state: dict[str, Any]) -> None:
        params = self._parameters(pl_module)
        weights = state["shadow"]
        missing, unexpected = set(params) - set(weights), set(weights) - set(params)
        if missing or unexpected:
            raise KeyError(f"EMA state does not match the network: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
        assert self._shadow is not None
        for name, p in params.items():
            full = weights[name].to(device=p.device, dtype=p.dtype)
            if DTensor is not None and isinstance(p, DTensor):
                # every rank holds the full tensor: slice its own shard, no communication
                full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local()
            if full.shape != self._shadow[name].shape:
                raise ValueError(f"EMA tensor {name!r}: checkpoint shape {tuple(full.shape)} "
                                 f"!= model shape {tuple(self._shadow[name].shape)}")
            self._shadow[name].copy_(full)
        self.num_updates = int(state["num_updates"])

    @torch.no_grad()
    def update(self, pl_module: L.LightningModule) -> None:
        """One EMA step on every (local) parameter shard."""
        self._ensure_shadow(pl_module)
        assert self._shadow is not None
        d = ema_decay(self.decay, self.num_updates, self.warmup)
        params = self._parameters(pl_module)
        shadows = [self._shadow[n] for n in params]
        currents = [_local(p).detach() for p in params.values()]
        torch._foreach_lerp_(shadows, currents, 1.0 - d)
        self.num_updates += 1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._ensure_shadow(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # global_step only moves on optimizer steps: skip accumulation micro-batches and repeats
        if step == self._last_step or step == 0:
            return
        self._last_step = step
        if step <= self.start_step:
            self._ensure_shadow(pl_module)
            assert self._shadow is not None
            for name, p in self._parameters(pl_module).items():
                self._shadow[name].copy_(_local(p).detach())
            return
        if step % self.update_every == 0:
            self.update(pl_module)

    # ---------------------------------------------------------------- swapping
    @torch.no_grad()
    def swap_in(self, pl_module: L.LightningModule) -> None:
        """Put the EMA weights into ``pl_module.net`` (keeps the training weights aside)."""
        if self._backup is not None:
            return
        self._ensure_shadow(pl_module)
        assert self._shadow is not None
        self._backup = {}
        for name, p in self._parameters(pl_module).items():
            self._backup[name] = _local(p).detach().clone()
            _local(p).copy_(self._shadow[name])

    @torch.no_grad()
    def swap_out(self, pl_module: L.LightningModule) -> None:
        """Restore the training weights after ``swap_in``."""
        if self._backup is None:
            return
        for name, p in self._parameters(pl_module).items():
            _local(p).copy_(self._backup[name])
        self._backup = None

    @contextlib.contextmanager
    def swapped(self, pl_module: L.LightningModule) -> Iterator[None]:
        """``with ema.swapped(module):`` evaluate or sample with the EMA weights."""
        already = self._backup is not None
        self.swap_in(pl_module)
        try:
            yield
        finally:
            if not already:
                self.swap_out(pl_module)

    def _eval_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.swap_for_eval and (self._shadow is not None or self._pending is not None):
            self.swap_in(pl_module)

    def _eval_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.swap_out(pl_module)

    on_validation_start = _eval_start
    on_validation_end = _eval_end
    on_test_start = _eval_start
    on_test_end = _eval_end
    on_predict_start = _eval_start
    on_predict_end = _eval_end

    # ---------------------------------------------------------------- checkpointing and export
    def full_state(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """The whole EMA weights on every rank (collective under FSDP2)."""
        self._ensure_shadow(pl_module)
        assert self._shadow is not None
        out = {}
        for name, p in self._parameters(pl_module).items():
            shard = self._shadow[name]
            if DTensor is not None and isinstance(p, DTensor):
                shard = DTensor.from_local(shard, p.device_mesh, p.placements, shape=p.shape,
                                           stride=p.stride()).full_tensor()
            out[name] = shard.detach().cpu().clone()
        return out

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # gathered here, not in state_dict(): only this hook sees the module, and every rank runs it
        state = {"shadow": self.full_state(pl_module), "num_updates": self.num_updates, "last_step": self._last_step}
        checkpoint.setdefault("callbacks", {})[self.state_key] = state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self._last_step = int(state_dict.get("last_step", -1))
        self._pending = state_dict  # applied once the (possibly sharded) network exists
        self.num_updates = int(state_dict["num_updates"])

    def export_safetensors(self, pl_module: L.LightningModule, path: str | Path) -> None:
        """Write the EMA weights of ``pl_module.net`` (and its buffers) as a safetensors file (rank 0)."""
        from safetensors.torch import save_file

        weights = self.full_state(pl_module)
        for name, buf in pl_module.net.named_buffers():
            weights[name] = _full(buf).detach().cpu().clone()
        if pl_module.global_rank == 0:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in weights.items()}, str(path))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.export_path:
            self.export_safetensors(pl_module, self.export_path)
        if self.bundle_path:
            from speedrun_diffusion.lightning_modules.serving import save_pretrained

            before = (pl_module.uses_ema, pl_module.trained_steps)
            with self.swapped(pl_module):
                pl_module.uses_ema, pl_module.trained_steps = True, trainer.global_step
                try:
                    if trainer.is_global_zero:
                        save_pretrained(pl_module, self.bundle_path)
                finally:
                    pl_module.uses_ema, pl_module.trained_steps = before


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if DTensor is not None and isinstance(t, DTensor) else t
