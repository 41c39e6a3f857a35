"""Inception Score against ADM's ``compute_inception_score`` (consecutive chunks of 5,000) and the
torch-fidelity rule (metrics README §2.5): every ``inception_score`` case."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.callbacks.metrics import InceptionScore
from speedrun_diffusion.callbacks.metrics.inception_score import ADM_SPLIT_SIZE, inception_score_torch_fidelity
from tests.conftest import load_case, reference_cases


@pytest.mark.parametrize("path", reference_cases("metrics", "inception_score"), ids=lambda p: p.stem)
def test_inception_score_adm_rule(path):
    spec, t = load_case(path)
    logits = t["input/logits"].float()
    assert spec["constants"]["split_size"] == ADM_SPLIT_SIZE
    metric = InceptionScore(split_size=spec["constants"]["split_size"])
    for chunk in logits.split(1234):  # several updates, one value
        metric.update(chunk)
    value = metric.compute()
    rtol = spec["tolerance"]["rtol"]
    torch.testing.assert_close(value, t["output/inception_score"], rtol=rtol, atol=0)
    torch.testing.assert_close(metric.split_scores, t["output/split_scores"], rtol=rtol, atol=0)
    assert [len(c) for c in logits.split(ADM_SPLIT_SIZE)] == t["output/split_sizes"].tolist()
    # float64 arithmetic of the same rule
    torch.testing.assert_close(value, t["output/inception_score_float64"], rtol=1e-9, atol=0)


@pytest.mark.parametrize("path", reference_cases("metrics", "inception_score"), ids=lambda p: p.stem)
def test_inception_score_torch_fidelity_rule_and_sample_order(path):
    spec, t = load_case(path)
    logits = t["input/logits"].float()
    mean, std = inception_score_torch_fidelity(logits)
    torch.testing.assert_close(mean, t["output/isc_torch_fidelity_mean"], rtol=1e-9, atol=0)
    torch.testing.assert_close(std, t["output/isc_torch_fidelity_std"], rtol=1e-7, atol=0)
    # the ADM rule depends on the order: indices restore it whatever order the updates came in
    perm = torch.randperm(len(logits))
    metric = InceptionScore()
    metric.update(logits[perm], indices=perm)
    torch.testing.assert_close(metric.compute(), t["output/inception_score"], rtol=spec["tolerance"]["rtol"], atol=0)
