"""LPIPS wrapper with an injected tiny feature net: metric identities, frozen weights with gradients to the
inputs, the bundled lpips v0.1 linear heads, the official-key mapping of the RAE LPIPS state dict, and equality
with the lpips package's LPIPS on the same (random VGG16, v0.1 head) weights."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.checkpoints.rae_stage1_gan import official_lpips_state_dict
from speedrun_diffusion.lightning_modules.losses.lpips import (
    LPIPS,
    VGG16_CHANNELS,
    ConvFeatures,
    lpips_linear_weights_path,
    lpips_vgg16,
    normalize_channels,
)


def tiny_lpips() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(ConvFeatures((4, 8, 8)))


def test_metric_identities() -> None:
    lp = tiny_lpips()
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    assert lp(x, x).item() == 0.0
    torch.testing.assert_close(lp(x, y), lp(y, x))
    per_image = lp(x, y, reduction="none")
    assert per_image.shape == (2, 1, 1, 1) and (per_image > 0).all()
    torch.testing.assert_close(sum(lp.layer_distances(x, y)), per_image)
    torch.testing.assert_close(lp(x, y), per_image.mean())
    with pytest.raises(ValueError, match="reduction"):
        lp(x, y, reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="two"):
        lp(x, y[:, :, :8])


def test_baseline_heads_equal_unweighted_distance() -> None:
    """Untrained heads are 1: each layer term is the mean over positions of ‖f̂(x) − f̂(y)‖²."""
    lp = tiny_lpips()
    x, y = torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 8, 8) * 2 - 1
    fx, fy = lp.features(x), lp.features(y)
    for term, a, b in zip(lp.layer_distances(x, y), fx, fy):
        ref = (normalize_channels(a) - normalize_channels(b)).square().sum(1).mean()
        assert term.item() == pytest.approx(ref.item(), rel=1e-5)


def test_frozen_with_input_gradients() -> None:
    lp = tiny_lpips()
    assert not any(p.requires_grad for p in lp.parameters())
    lp.train()
    assert not lp.training  # a fixed metric stays in eval mode
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    lp(x, torch.zeros(1, 3, 16, 16)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bundled_vgg_linear_heads() -> None:
    """The lpips package ships the v0.1 heads: they load offline and are non-negative."""
    lp = LPIPS(lpips_vgg16(pretrained=False), VGG16_CHANNELS, pretrained=False, linear_weights=lpips_linear_weights_path())
    for lin, c in zip(lp.lins, VGG16_CHANNELS):
        assert lin.weight.shape == (1, c, 1, 1) and (lin.weight >= 0).all() and lin.weight.sum() > 0
    with pytest.raises(ValueError, match="channels"):
        LPIPS(torch.nn.Identity())


def test_official_key_mapping() -> None:
    reindexed = {"net.slice2.1.weight": torch.zeros(1), "net.slice5.5.bias": torch.zeros(1),
                 "lin3.model.1.weight": torch.zeros(1),
                 "scaling_layer.shift": torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)}
    assert set(official_lpips_state_dict(reindexed)) == {"net.slice2.5.weight", "net.slice5.28.bias", "lins.3.weight"}
    torchvision_indexed = {"net.slice2.5.weight": torch.zeros(1), "net.slice1.0.weight": torch.zeros(1)}
    assert set(official_lpips_state_dict(torchvision_indexed)) == set(torchvision_indexed)
    with pytest.raises(ValueError, match="scaling_layer.scale"):
        official_lpips_state_dict({"scaling_layer.scale": torch.ones(1, 3, 1, 1)})


def test_equals_the_lpips_package_on_the_same_weights() -> None:
    """Our LPIPS is the lpips package's LPIPS(net="vgg", version="0.1"): same random VGG16 injected into both
    (pnet_rand: no download), the package's bundled v0.1 heads loaded by each side's own loader."""
    import warnings

    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's deprecated ``pretrained=`` argument inside lpips
        warnings.simplefilter("ignore", UserWarning)
        ref = lpips.LPIPS(pretrained=True, net="vgg", version="0.1", pnet_rand=True, verbose=False)  # heads only
    ours = LPIPS(lpips_vgg16(pretrained=False), VGG16_CHANNELS, pretrained=False,
                 linear_weights=lpips_linear_weights_path("vgg"))
    ours.net.load_state_dict(ref.net.state_dict())
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    y[2] = x[2] + 0.05 * torch.randn(3, 64, 64, generator=g)  # one near pair: a small distance too
    with torch.no_grad():
        expected, expected_layers = ref(x, y, retPerLayer=True)  # inputs already in [−1, 1]
        got, got_layers = ours(x, y, reduction="none"), ours.layer_distances(x, y)
    assert expected.shape == got.shape == (3, 1, 1, 1)
    assert (expected > 0).all() and expected.flatten().unique().numel() == 3  # distinct, non-trivial values
    # the same ops in the same order: bit-equal, per layer and in total (max abs diff 0.0)
    for a, b in zip(got_layers, expected_layers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
