"""SR-DiT sampling through the `Evaluation` callback: balanced labels (sample k → class k mod num_classes), decoded
images in [−1, 1], and KDD (primary) + FID, sFID, IS, precision/recall computed with tiny injected feature nets."""
from __future__ import annotations

import math

import lightning as L
import torch

from speedrun_diffusion.callbacks import Evaluation
from tests.helpers.eval_toy import image_loader, tiny_dinov2, tiny_inception
from tests.unit.recipes.test_srdit import _module


def test_evaluation_on_tiny_srdit_uses_balanced_labels():
    module = _module(sampling=dict(num_steps=2))  # 3 classes, 8×8 px images through a tiny INVAE
    calls: list[torch.Tensor] = []
    sample = module.sample

    def recording_sample(labels, **kwargs):
        calls.append(labels.cpu())
        images = sample(labels, **kwargs)
        assert images.shape == (len(labels), 3, 8, 8) and images.abs().max() <= 1
        return images

    module.sample = recording_sample
    evaluation = Evaluation(metrics=("kdd", "fid", "sfid", "is", "precision_recall"), num_samples=7, batch_size=3,
                            inception=tiny_inception(), dinov2=tiny_dinov2(), kdd_subsets=2, kdd_subset_size=5,
                            progress=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[evaluation])
    trainer.validate(module, dataloaders=image_loader(n=8, batch_size=4))
    assert torch.equal(torch.cat(calls), torch.arange(7) % 3)  # balanced, in order
    assert [len(c) for c in calls] == [3, 3, 1]
    results = evaluation.last_results
    assert {"kdd", "fid", "sfid", "inception_score", "precision", "recall"} <= set(results)
    assert all(math.isfinite(v) for v in results.values())
    assert "eval/kdd" in trainer.callback_metrics and "val/repa" in trainer.callback_metrics
