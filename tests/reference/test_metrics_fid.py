"""FID / sFID arithmetic against the ADM evaluator's values (metrics README §2.3, §2.4): every
``fid*`` case and the ``sfid_layout`` case under ``$SPEEDRUN_REFERENCE_DIR/metrics``."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.callbacks.features import spatial_features
from speedrun_diffusion.callbacks.metrics import FID, SFID
from tests.conftest import load_case, reference_cases

FID_CASES = [p for case in ("fid", "fid_identical", "fid_small_n") for p in reference_cases("metrics", case)]


@pytest.mark.parametrize("path", FID_CASES, ids=lambda p: p.stem)
def test_fid_matches_adm(path):
    spec, t = load_case(path)
    real, fake = t["input/real_features"].float(), t["input/fake_features"].float()  # ADM was fed float32
    metric = FID(num_features=real.shape[1])
    metric.update(real, real=True)
    metric.update(fake, real=False)
    value = metric.compute()
    assert value.dtype == torch.float64
    assert abs(value.item() - t["output/fid"].item()) <= spec["tolerance"]["atol"]

    # intermediates: float64 covariance ddof 1 (rtol 1e-9 of the largest entry), mean rtol 1e-6
    for side in ("real", "fake"):
        mu, sigma = metric.statistics(real=side == "real")
        torch.testing.assert_close(mu, t[f"output/mu_{side}"].double(), rtol=1e-6, atol=1e-7)
        expected = t[f"output/sigma_{side}"]
        assert (sigma - expected).abs().max() <= 1e-9 * expected.abs().max()
        trace = t[f"output/trace_sigma_{side}"].item()
        assert abs(sigma.trace().item() - trace) <= 1e-9 * trace


@pytest.mark.parametrize("path", FID_CASES, ids=lambda p: p.stem)
def test_sfid_is_the_same_distance_and_fixed_reference_statistics_are_used_as_stored(path):
    spec, t = load_case(path)
    real, fake = t["input/real_features"].float(), t["input/fake_features"].float()
    reference = (t["output/mu_real"], t["output/sigma_real"])  # ADM's stored statistics
    metric = SFID(num_features=real.shape[1], reference=reference)
    metric.update(fake, real=False)
    assert abs(metric.compute().item() - t["output/fid"].item()) <= spec["tolerance"]["atol"]
    with pytest.raises(RuntimeError, match="fixed reference"):
        metric.update(real, real=True)


@pytest.mark.parametrize("path", reference_cases("metrics", "sfid_layout"), ids=lambda p: p.stem)
def test_sfid_layout_is_adm_nhwc_first_seven_channels(path):
    spec, t = load_case(path)
    expected = t["output/spatial_features"]
    got = spatial_features(t["input/mixed_6_conv_nchw"].float())
    assert got.shape == expected.shape
    assert torch.equal(got, expected.float())  # exact: pure data movement
    assert not torch.equal(got, t["output/nchw_flatten_not_adm"].float())  # the channel-major order is not ADM's
