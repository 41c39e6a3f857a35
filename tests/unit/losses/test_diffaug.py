"""DiffAug with explicit randomness: translation as an integer shift with zero fill, colour identities,
cutout area, draw order and float32 computation."""
from __future__ import annotations

import torch

from speedrun_diffusion.lightning_modules.losses.diffaug import DiffAug, color, cutout, translate


def test_translation_is_shift_with_zero_fill() -> None:
    x = torch.randn(2, 3, 16, 16)
    # δ = round(0.125·16) = 2, t = ⌊r·5⌋ − 2: r = 0.7 → +1, r = 0.1 → −2
    r_h = torch.tensor([0.7, 0.1]).view(2, 1, 1)
    r_w = torch.tensor([0.5, 0.99]).view(2, 1, 1)  # 0 and +2
    out = translate(x, r_h, r_w)
    torch.testing.assert_close(out[0, :, :15, :], x[0, :, 1:, :])
    assert (out[0, :, 15] == 0).all()
    torch.testing.assert_close(out[1, :, 2:, :14], x[1, :, :14, 2:])
    assert (out[1, :, :2] == 0).all() and (out[1, :, :, 14:] == 0).all()


def test_color_identity_and_brightness() -> None:
    x = torch.randn(2, 3, 8, 8)
    half = torch.full((2, 1, 1), 0.5)
    torch.testing.assert_close(color(x, half, half, half), x)  # +0, ×1 saturation, ×1 contrast
    shifted = color(x, torch.full((2, 1, 1), 0.75), half, half)
    torch.testing.assert_close(shifted, x + 0.25)


def test_cutout_area() -> None:
    x = torch.ones(2, 3, 10, 10)
    out = cutout(x, torch.full((2, 1, 1), 0.5), torch.full((2, 1, 1), 0.5), ratio=0.2)
    assert (out == 0).sum().item() == 2 * 3 * 2 * 2  # a 2×2 patch per sample, away from the border
    torch.testing.assert_close(cutout(x, torch.zeros(2, 1, 1), torch.zeros(2, 1, 1), ratio=0.0), x)


def test_draws_replay_and_dtype() -> None:
    aug = DiffAug(prob=1.0, cutout=0.0)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    out = aug(x, generator=g)
    g = torch.Generator().manual_seed(7)
    flags, rand = aug.draw(3, g)
    assert rand is not None and rand.shape == (7, 3, 1, 1)
    torch.testing.assert_close(aug(x, flags, rand), out)
    assert out.dtype == torch.float32
    # all flags above prob: no transform, and r is not drawn
    off = DiffAug(prob=0.5)
    _, none = off.draw(3, flags=torch.tensor([0.9, 0.8, 0.7]))
    assert none is None
    torch.testing.assert_close(off(x, torch.tensor([0.9, 0.8, 0.7])), x.float())


def test_gradients_flow() -> None:
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    DiffAug(prob=1.0, cutout=0.2)(x, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
