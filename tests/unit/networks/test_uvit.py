"""Residual U-ViT (SiD2 eq. 5): identity at init, shapes for every patching and block mix, asymmetric depths,
App. A.4 presets (their settings, and on the meta device their App. A.2 FLOP counts), and clear config errors."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from speedrun_diffusion.lightning_modules.networks.uvit import (
    UViT,
    UViTConfig,
    measured_gflops,
    resblock_gflops,
    transformer_gflops,
    uvit_formula_gflops,
    uvit_preset,
)

TINY = UViTConfig(resolution=16, patch_size=1, channels=(16, 32, 64), block_types=("resblock", "transformer", "transformer"),
                  num_down_blocks=(1, 2), num_up_blocks=(2, 1), num_mid_blocks=2, block_dropout=(0.0, 0.1, 0.1),
                  head_dim=16, num_classes=4)


def _inputs(cfg: UViTConfig, batch: int = 2):
    z = torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution)
    return z, torch.linspace(-10, 10, batch), torch.arange(batch) % cfg.num_classes


@pytest.mark.parametrize("train", [False, True])
def test_trunk_is_identity_at_init(train: bool):
    # every block starts as the identity, so f(x) = f_u(U(f_m(D(h)) − D(h)) + h) = x exactly (SiD2 Sec. 2.3)
    net = UViT(TINY).train(train)
    h = torch.randn(3, 16, 16, 16)
    c = torch.randn(3, TINY.embed_dim)
    torch.testing.assert_close(net.trunk(h, c), h, rtol=0, atol=0)
    # and the network's prediction starts at zero (zero head), whatever the input and condition
    z, lam, y = _inputs(TINY, 3)
    assert torch.count_nonzero(net(z, lam, y)) == 0


def test_trunk_is_not_identity_once_trained():
    net = UViT(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    h = torch.randn(2, 16, 16, 16)
    assert not torch.allclose(net.trunk(h, torch.randn(2, TINY.embed_dim)), h)


@pytest.mark.parametrize("patch", [1, 2, 4])
@pytest.mark.parametrize("types", [("resblock",) * 3, ("transformer",) * 3, ("resblock", "resblock", "transformer")])
def test_shapes_for_every_patching_and_block_mix(patch: int, types):
    cfg = replace(TINY, resolution=16 * patch, patch_size=patch, block_types=types)
    net = UViT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    z, lam, y = _inputs(cfg)
    out = net(z, lam, y)
    assert out.shape == z.shape and torch.isfinite(out).all()
    out.sum().backward()  # every parameter is reachable
    assert all(p.grad is not None for p in net.parameters())


def test_asymmetric_depths_and_per_level_dropout():
    cfg = replace(TINY, num_down_blocks=(1, 1), num_up_blocks=(3, 2))  # E1-D3 / E1-D2 (Sec. 4.3)
    net = UViT(cfg)
    assert len(net.trunk.down.blocks) == 1 and len(net.trunk.up.blocks) == 3
    assert len(net.trunk.inner.down.blocks) == 1 and len(net.trunk.inner.up.blocks) == 2
    assert len(net.trunk.inner.inner.blocks) == cfg.num_mid_blocks
    assert net.trunk.down.blocks[0].dropout.p == 0.0 and net.trunk.inner.inner.blocks[0].dropout.p == 0.1
    assert len(net.blocks) == 1 + 3 + 1 + 2 + 2


def test_condition_uses_null_class_and_logsnr():
    net = UViT(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    z, lam, y = _inputs(TINY)
    base = net(z, lam, y)
    assert not torch.allclose(base, net(z, lam + 1.0, y))
    null = net(z, lam, torch.full_like(y, TINY.num_classes))  # row num_classes is "no class"
    torch.testing.assert_close(null, net(z, lam, y, force_drop=torch.ones(2, dtype=torch.bool)))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(resolution=18), "total downsampling 4"),
        (dict(resolution=32, patch_size=3), "not divisible by patch_size"),
        (dict(block_types=("resblock", "conv", "transformer")), "unknown block type"),
        (dict(num_down_blocks=(1,)), "num_down_blocks has 1 entries"),
        (dict(head_dim=24), "head_dim"),
    ],
)
def test_bad_configs_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        UViT(replace(TINY, **bad))


def test_input_shape_is_checked():
    with pytest.raises(ValueError, match="expected input"):
        UViT(TINY)(torch.zeros(1, 3, 32, 32), torch.zeros(1), torch.zeros(1, dtype=torch.long))


PRESET_PATCH = {("small", 128): 1, ("small", 256): 2, ("small", 512): 4,
                ("flop_heavy", 128): 1, ("flop_heavy", 256): 1, ("flop_heavy", 512): 2}


@pytest.mark.parametrize("name, resolution", sorted(PRESET_PATCH))
def test_presets_build_on_meta_with_a2_flops(name: str, resolution: int):
    cfg = uvit_preset(name, resolution)
    assert cfg.patch_size == PRESET_PATCH[name, resolution]
    assert cfg.channels == ((256, 512, 1024) if (name, resolution) == ("flop_heavy", 128) else (128, 256, 512, 1024))
    with torch.device("meta"):
        net = UViT(cfg)
    assert next(net.parameters()).is_meta
    formula, measured = uvit_formula_gflops(cfg), measured_gflops(net)
    # A.2 counts multiply-adds, the flop counter counts 2 per multiply-add; the rest (stem, D/U, adaLN) is small
    assert 2.0 <= measured / formula <= 2.05, (formula, measured)
    # "flop heavy" keeps the parameters and multiplies the compute (Sec. 2.2)
    if name == "flop_heavy" and resolution > 128:
        small = uvit_preset("small", resolution)
        assert uvit_formula_gflops(cfg) > 4 * uvit_formula_gflops(small)


@pytest.mark.parametrize("name, resolution", sorted(PRESET_PATCH))
def test_presets_carry_the_a4_settings(name: str, resolution: int):
    # App. A.4, both variants: num_updown_blocks [3, 3, 3], num_mid_blocks 16, block_dropout [0, 0, 0.1, 0.1],
    # block_type [Res, Res, Transformer, Transformer]; flop heavy at 128² drops the top (128-channel) level
    cfg = uvit_preset(name, resolution)
    top = 1 if (name, resolution) == ("flop_heavy", 128) else 0
    assert cfg.block_types == ("resblock", "resblock", "transformer", "transformer")[top:]
    assert cfg.block_dropout == (0.0, 0.0, 0.1, 0.1)[top:]
    assert cfg.num_down_blocks == cfg.num_up_blocks == (3, 3, 3)[top:]
    assert cfg.num_mid_blocks == 16


def test_a2_formulas_by_hand():
    # 12·C²·N + 2·N²·C with C = 1024, N = 32² and one block; 2·9·C²·N for a resblock at 64², C = 128
    assert transformer_gflops(32, 1024, 1) == pytest.approx((12 * 1024**2 * 1024 + 2 * 1024**2 * 1024) / 1e9)
    assert resblock_gflops(64, 128, 2) == pytest.approx(18 * 128**2 * 2 * 64**2 / 1e9)


def test_fine_tune_path_has_identical_parameters():
    # small at 256 (p = 2) and flop heavy at 512 (p = 2) have the same tensors: SiD2 Sec. 2.2 fine-tune
    with torch.device("meta"):
        a, b = UViT(uvit_preset("small", 256)), UViT(uvit_preset("flop_heavy", 512))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
