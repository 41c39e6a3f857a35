"""KDD against dgm-eval's ``compute_mmd`` (metrics README §2.7): every ``kdd*`` case, fed the
recorded subset indices, float64, within the JSON's rtol/atol; the seeded draw reproduces them."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.callbacks.metrics import KDD, kernel_distance, polynomial_mmd
from speedrun_diffusion.callbacks.metrics.kdd import dgm_subset_indices
from tests.conftest import load_case, reference_cases

CASES = [p for case in ("kdd", "kdd_identical") for p in reference_cases("metrics", case)]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: p.stem)
def kdd_case(request):
    spec, t = load_case(request.param)
    indices = (t["input/subset_indices_real"], t["input/subset_indices_fake"])
    # float64 copies, as dgm-eval's representation arrays
    out = kernel_distance(t["input/real_features"].double(), t["input/fake_features"].double(), indices)
    return spec, t, out


def test_kdd_matches_dgm_eval(kdd_case):
    spec, t, out = kdd_case
    tol = spec["tolerance"]
    for name in ("mmd_per_subset", "kd_value", "kd_std"):
        torch.testing.assert_close(out[name], t[f"output/{name}"], rtol=tol["rtol"], atol=tol["atol"], msg=name)
    m = spec["info"]["m_first"]
    first = polynomial_mmd(t["input/real_features"][:m], t["input/fake_features"][:m])
    torch.testing.assert_close(first, t["output/mmd_first_m"], rtol=tol["rtol"], atol=tol["atol"])


def test_kdd_seeded_subsets_are_dgm_evals_draw(kdd_case):
    spec, t, _ = kdd_case
    real_idx, fake_idx = dgm_subset_indices(len(t["input/real_features"]), len(t["input/fake_features"]),
                                            seed=spec["info"]["np_random_seed"])
    assert torch.equal(real_idx, t["input/subset_indices_real"].long())
    assert torch.equal(fake_idx, t["input/subset_indices_fake"].long())


def test_kdd_metric_several_updates_with_recorded_subsets(kdd_case):
    spec, t, out = kdd_case
    k = 5  # a few subsets keep this quick; the full 100 are checked above
    indices = (t["input/subset_indices_real"][:k], t["input/subset_indices_fake"][:k])
    metric = KDD(subset_indices=indices)
    for r in t["input/real_features"].float().chunk(3):
        metric.update(r, real=True)
    for f in t["input/fake_features"].float().chunk(4):
        metric.update(f, real=False)
    torch.testing.assert_close(metric.compute(), t["output/mmd_per_subset"][:k].mean(),
                               rtol=spec["tolerance"]["rtol"], atol=spec["tolerance"]["atol"])


def test_kdd_per_subset_products_path_matches(kdd_case, monkeypatch):
    """Large sets take per-subset kernel products (no full Gram matrix): same values on a few subsets."""
    import speedrun_diffusion.callbacks.metrics.kdd as kdd_module

    spec, t, _ = kdd_case
    monkeypatch.setattr(kdd_module, "GRAM_LIMIT", 0)
    k = 3
    out = kernel_distance(t["input/real_features"], t["input/fake_features"],
                          (t["input/subset_indices_real"][:k], t["input/subset_indices_fake"][:k]))
    torch.testing.assert_close(out["mmd_per_subset"], t["output/mmd_per_subset"][:k], rtol=spec["tolerance"]["rtol"],
                               atol=spec["tolerance"]["atol"])
