"""Launched by test_fault_tolerance_sharded.py: the toy recipe on 2 CPU processes (FSDP2 via ModelParallelStrategy,
gloo) or on one, with a NaN loss term on rank 1 only at one step and the resumable training loader; saves the
trajectory, the skip counter and the batches each rank saw to ``out``. No tests here."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from speedrun_diffusion.datamodules.loaders import train_loader  # noqa: E402
from speedrun_diffusion.lightning_modules.process_group import leave_process_group  # noqa: E402
from tests.helpers.toy_recipe import RecordTrajectory, ToyData, ToyRecipe  # noqa: E402

NAN_STEP, NAN_RANK = 2, 1


class NaNOnOneRank(ToyRecipe):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []

    def compute_losses(self, batch, generator=None):
        losses = super().compute_losses(batch)
        if self.training:
            self.seen.append(batch["label"].tolist())
        bad = self.training and self.global_step == NAN_STEP and self.global_rank == NAN_RANK
        aux = torch.tensor(float("nan") if bad else 0.0)
        return {"loss": losses["loss"] + aux, "mse": losses["mse"], "aux": aux}


class IndexedData(ToyData):
    """ToyData whose label is the sample index, so the test sees which samples each rank trained on."""

    def __getitem__(self, i: int):
        return {**super().__getitem__(i), "label": torch.tensor(i)}


def main(world_size: int, out: str, steps: int = 4) -> None:
    torch.use_deterministic_algorithms(True)
    strategy = ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1) if world_size > 1 else "auto"
    recorder = RecordTrajectory()
    trainer = L.Trainer(accelerator="cpu", devices=world_size, strategy=strategy, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[recorder])
    module = NaNOnOneRank()
    # built before the process group exists: the sampler must find its rank when iterated
    loader = train_loader(IndexedData(16), batch_size=8 // world_size, num_workers=0, seed=0)
    trainer.fit(module, train_dataloaders=loader)
    seen = [None] * world_size
    if world_size > 1:
        torch.distributed.all_gather_object(seen, module.seen)
    else:
        seen = [module.seen]
    if trainer.global_rank == 0:
        torch.save({"trajectory": recorder.trajectory, "nonfinite_steps": module.nonfinite_steps, "seen": seen,
                    "param_type": type(next(module.net.parameters())).__name__}, out)
    leave_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
