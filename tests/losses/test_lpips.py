"""LPIPS wrapper with an injected tiny feature net: metric identities, frozen weights with gradients to the
inputs, the bundled lpips v0.1 linear heads, and the official-key mapping of the RAE LPIPS state dict."""
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
