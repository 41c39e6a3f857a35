"""Run the toy recipe with EMA for a few steps on 2 CPU processes (FSDP2 via ModelParallelStrategy,
gloo) or on one process, and save EMA + trajectory to ``out``. Launched by test_ema_sharded.py."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from speedrun_diffusion.callbacks.ema import EMA  # noqa: E402
from speedrun_diffusion.lightning_modules.process_group import leave_process_group  # noqa: E402
from tests.helpers.toy_recipe import RecordTrajectory, ToyRecipe, toy_loader  # noqa: E402


def main(world_size: int, out: str, steps: int = 6, decay: float = 0.8) -> None:
    torch.use_deterministic_algorithms(True)
    strategy = ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1) if world_size > 1 else "auto"
    recorder, ema = RecordTrajectory(), EMA(decay=decay)
    trainer = L.Trainer(accelerator="cpu", devices=world_size, strategy=strategy, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[recorder, ema], use_distributed_sampler=True)
    module = ToyRecipe()
    trainer.fit(module, train_dataloaders=toy_loader(world_size))
    state = ema.full_state(module)
    sharded = type(next(module.net.parameters())).__name__
    if trainer.global_rank == 0:
        torch.save({"ema": state, "trajectory": recorder.trajectory, "param_type": sharded}, out)
    leave_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
