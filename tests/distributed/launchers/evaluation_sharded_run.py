"""Run `Evaluation` under ``validate`` on 2 CPU processes (FSDP2 via ModelParallelStrategy, gloo) or on
one process, and save its results to ``out``; on 2 processes also feed the metrics half of a
reference case's features per rank. Launched by tests/distributed/test_evaluation_sharded.py."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from speedrun_diffusion.callbacks.evaluation import Evaluation  # noqa: E402
from speedrun_diffusion.callbacks.metrics import FID, KDD, InceptionScore, PrecisionRecall  # noqa: E402
from speedrun_diffusion.lightning_modules.process_group import leave_process_group  # noqa: E402
from tests.helpers.eval_toy import EvalToyRecipe, image_loader, tiny_dinov2, tiny_inception  # noqa: E402

NUM_SAMPLES, BATCH = 18, 4  # 5 global batches: uneven over 2 ranks, so one rank draws a discarded batch


def evaluation() -> Evaluation:
    return Evaluation(metrics=("fid", "sfid", "is", "precision_recall", "kdd"), num_samples=NUM_SAMPLES,
                      batch_size=BATCH, num_reference=22, inception=tiny_inception(), dinov2=tiny_dinov2(),
                      kdd_subsets=4, kdd_subset_size=10, progress=False)


def split_metrics(case: str, rank: int, world: int) -> dict[str, float]:
    """The metrics fed this rank's contiguous half of a reference case's features (gathered in compute)."""
    from safetensors.torch import load_file

    t = {k: v.float() for k, v in load_file(case).items() if k.startswith("input/") and v.is_floating_point()}
    real, fake = t["input/real_features"], t["input/fake_features"]
    part = lambda x: x.chunk(world)[rank]  # noqa: E731
    fid, pr = FID(num_features=real.shape[1]), PrecisionRecall()
    kdd = KDD(num_subsets=3, subset_size=50, seed=5)
    inception = InceptionScore(split_size=100)
    for metric in (fid, pr, kdd):
        metric.update(part(real), real=True)
        metric.update(part(fake), real=False)
    # logits stand-in with an order-dependent score: the fake features, indices given in reverse rank order
    idx = torch.arange(len(fake)).chunk(world)[rank]
    inception.update(part(fake)[:, :64] / 4, indices=idx)
    return {"fid": float(fid.compute()), **{k: float(v) for k, v in pr.compute().items()},
            "kdd": float(kdd.compute()), "is": float(inception.compute())}


def main(world_size: int, out: str, case: str | None = None) -> None:
    torch.use_deterministic_algorithms(True)
    strategy = ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1) if world_size > 1 else "auto"
    ev = evaluation()
    trainer = L.Trainer(accelerator="cpu", devices=world_size, strategy=strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ev], limit_val_batches=1)
    module = EvalToyRecipe()
    trainer.validate(module, dataloaders=image_loader(), verbose=False)
    result = {"evaluation": dict(ev.last_results), "param_type": type(next(module.net.parameters())).__name__,
              "logged": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}}
    if case:
        result["split_metrics"] = split_metrics(case, trainer.global_rank, trainer.world_size)
    if trainer.global_rank == 0:
        torch.save(result, out)
    leave_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
