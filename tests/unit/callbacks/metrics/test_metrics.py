"""Metric mechanics: several ``update`` calls equal one big call; reset keeps what it should; fixed
reference statistics from an ADM .npz are used as stored; bad input fails clearly; PSNR/SSIM are
torchmetrics' per-image values on the uint8 range."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speedrun_diffusion.callbacks.metrics import FID, KDD, PSNR, SFID, SSIM, InceptionScore, PrecisionRecall
from tests.conftest import reference_cases

PR_CASE = reference_cases("metrics", "precision_recall_identical")


@pytest.fixture(scope="module")
def features():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 24, generator=g).exp()
    fake = (torch.randn(260, 24, generator=g) * 0.9 + 0.2).exp()
    return real, fake


def _feed(metric, real, fake, pieces):
    for r in real.chunk(pieces):
        metric.update(r, real=True)
    for f in fake.chunk(pieces):
        metric.update(f, real=False)
    return metric.compute()


def test_fid_several_updates_equal_one_call(features):
    real, fake = features
    one, many = _feed(FID(num_features=24), real, fake, 1), _feed(FID(num_features=24), real, fake, 7)
    torch.testing.assert_close(one, many, rtol=1e-10, atol=1e-12)
    assert one > 0.05


def test_pr_and_kdd_several_updates_equal_one_call(features):
    real, fake = features
    one, many = _feed(PrecisionRecall(), real, fake, 1), _feed(PrecisionRecall(), real, fake, 5)
    assert one == many
    kwargs = dict(num_subsets=4, subset_size=50, seed=3)
    torch.testing.assert_close(_feed(KDD(**kwargs), real, fake, 1), _feed(KDD(**kwargs), real, fake, 6),
                               rtol=1e-12, atol=0)


def test_inception_score_several_updates_equal_one_call(features):
    logits = features[1][:, :10] * 3
    one, many = InceptionScore(split_size=100), InceptionScore(split_size=100)
    one.update(logits)
    for part in logits.split(37):
        many.update(part)
    torch.testing.assert_close(one.compute(), many.compute(), rtol=0, atol=0)
    assert len(one.split_scores) == 3  # 100 + 100 + 60, consecutive
    shuffled = InceptionScore(split_size=100)
    shuffled.update(logits[torch.randperm(len(logits))])
    assert not torch.allclose(shuffled.compute(), one.compute())  # the ADM rule depends on the order


def test_reset_can_keep_the_real_side(features):
    real, fake = features
    metric = FID(num_features=24, reset_real_features=False)
    value = _feed(metric, real, fake, 1)
    metric.reset()
    assert metric.real_n == len(real) and metric.fake_n == 0
    metric.update(fake, real=False)
    torch.testing.assert_close(metric.compute(), value)


def test_fixed_reference_from_an_adm_npz(tmp_path, features):
    real, fake = features
    computed = _feed(FID(num_features=24), real, fake, 1)
    stats = FID(num_features=24)
    stats.update(real, real=True)
    mu, sigma = stats.statistics(real=True)
    path = tmp_path / "VIRTUAL_ref.npz"
    np.savez(path, mu=mu.float().numpy(), sigma=sigma.numpy(), mu_s=mu.numpy(), sigma_s=sigma.numpy(),
             arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    for cls in (FID, SFID):
        metric = cls(num_features=24, reference=path)
        metric.update(fake, real=False)
        torch.testing.assert_close(metric.compute(), computed, rtol=1e-6, atol=1e-7)
    np.savez(tmp_path / "imgs_only.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(KeyError, match=r"lacks \['mu_s', 'sigma_s'\]"):
        SFID(num_features=24, reference=tmp_path / "imgs_only.npz")
    with pytest.raises(ValueError, match="num_features=2048"):
        FID(reference=path)


def test_bad_feature_input_fails_clearly(features):
    real, _ = features
    with pytest.raises(ValueError, match=r"\(N, 2048\)"):
        FID().update(real, real=True)
    with pytest.raises(ValueError, match="at least 2 samples"):
        metric = FID(num_features=24)
        metric.update(real[:1], real=True)
        metric.update(real, real=False)
        metric.compute()
    with pytest.raises(ValueError, match="k=3"):
        _feed(PrecisionRecall(), real[:3], real[:3], 1)
    with pytest.raises(ValueError, match="unknown Inception Score rule"):
        InceptionScore(rule="tf")  # type: ignore[arg-type]


def test_fid_raises_like_adm_on_a_large_imaginary_part(monkeypatch):
    import scipy.linalg

    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: np.eye(len(a)) * (1 + 0.01j))
    from speedrun_diffusion.callbacks.metrics import frechet_distance

    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3))


def test_psnr_ssim_are_per_image_on_the_uint8_range():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 256, (4, 3, 16, 16), generator=g).float()
    noisy = (target + torch.randint(-3, 4, target.shape, generator=g)).clamp(0, 255)
    psnr, ssim = PSNR(), SSIM()
    psnr.update(noisy[:2], target[:2])
    psnr.update(noisy[2:], target[2:])
    mse = (noisy - target).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(psnr.compute(), (10 * torch.log10(255 ** 2 / mse)).mean(), rtol=1e-5, atol=1e-5)
    ssim.update(target, target)
    torch.testing.assert_close(ssim.compute(), torch.tensor(1.0))
