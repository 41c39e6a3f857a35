"""Improved precision/recall against ADM's ``ManifoldEstimator`` (float32 branch; metrics README §2.6):
every ``precision_recall*`` case, in float32 and float64, within the JSON's borderline tolerance."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.callbacks.metrics import PrecisionRecall
from speedrun_diffusion.callbacks.metrics.precision_recall import precision_recall
from tests.conftest import load_case, reference_cases

CASES = [p for case in ("precision_recall", "precision_recall_identical") for p in reference_cases("metrics", case)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_precision_recall_matches_adm(path, dtype):
    spec, t = load_case(path)
    tol = spec["tolerance"]["float32_or_float64_implementation"]
    real, fake = t["input/real_features"].float(), t["input/fake_features"].float()
    metric = PrecisionRecall(k=spec["constants"]["k"], dtype=dtype, row_batch_size=700, col_batch_size=900)
    for r, f in zip(real.chunk(3), fake.chunk(3)):
        metric.update(r, real=True)
        metric.update(f, real=False)
    out = metric.compute()
    assert abs(out["precision"].item() - t["output/precision"].item()) <= tol["precision_atol"]
    assert abs(out["recall"].item() - t["output/recall"].item()) <= tol["recall_atol"]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_radii_and_batch_size_independence(path):
    spec, t = load_case(path)
    real, fake = t["input/real_features"].float(), t["input/fake_features"].float()
    p1, r1, radii_real, radii_fake = precision_recall(real, fake, k=spec["constants"]["k"])
    torch.testing.assert_close(radii_real, t["output/radii_real"].float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(radii_fake, t["output/radii_fake"].float(), rtol=1e-5, atol=0)
    p2, r2, _, _ = precision_recall(real, fake, k=spec["constants"]["k"], row_batch_size=1500, col_batch_size=1100)
    assert (p1.item(), r1.item()) == (p2.item(), r2.item())
