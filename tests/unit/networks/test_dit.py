"""DiT family network: shapes, adaLN-Zero identity at init, parameter count formula, presets, options."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.networks.dit import DIT_SIZES, DiT, DiTConfig, count_parameters, dit_preset


def tiny(**kw) -> DiTConfig:
    base = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=5)
    return DiTConfig(**{**base, **kw})


def test_output_shape_and_zero_at_init():
    net = DiT(tiny())
    x, t, y = torch.randn(3, 3, 8, 8), torch.rand(3), torch.tensor([0, 4, 5])
    out = net(x, t, y)
    assert out.shape == x.shape
    # adaLN-Zero: zero final layer and zero gates → the network outputs exactly 0 at initialisation
    assert torch.count_nonzero(out) == 0


def _perturb(net: DiT, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("options", [
    {},
    dict(norm="rmsnorm", qk_norm=True, rope=True, value_residual=True),
    dict(norm="rmsnorm", mlp="swiglu", modulation="global", rope=True, qk_norm=True),
])
def test_options_forward_backward(options):
    net = DiT(tiny(**options))
    _perturb(net)
    x = torch.randn(2, 3, 8, 8)
    out = net(x, torch.rand(2), torch.tensor([1, 2]))
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_class_conditioning_and_forced_drop():
    net = DiT(tiny())
    _perturb(net)
    net.eval()
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 0.5)
    a = net(x, t, torch.tensor([0, 0]))
    b = net(x, t, torch.tensor([1, 1]))
    null = net(x, t, torch.tensor([5, 5]))
    forced = net(x, t, torch.tensor([0, 0]), force_drop=torch.tensor([True, True]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(forced, null)


def test_parameter_count_matches_formula():
    cfg = tiny(depth=3, hidden_size=48, num_heads=4)
    d, c, p, k = cfg.hidden_size, cfg.in_channels, cfg.patch_size, cfg.num_classes
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + (6 * d * d + 6 * d)
    embed = (c * p * p * d + d) + (256 * d + d) + (d * d + d) + (k + 1) * d
    final = (2 * d * d + 2 * d) + (d * p * p * c + p * p * c)
    assert count_parameters(DiT(cfg)) == cfg.depth * block + embed + final


def test_presets_and_errors():
    cfg = dit_preset("SiT-XL/2", input_size=32, in_channels=4)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (*DIT_SIZES["XL"], 2)
    with pytest.raises(ValueError, match="unknown preset"):
        dit_preset("SiT-Huge/2")
    with pytest.raises(ValueError, match="divisible"):
        DiT(tiny(input_size=9))
    with pytest.raises(ValueError, match="expected input"):
        DiT(tiny())(torch.randn(1, 3, 16, 16), torch.rand(1), torch.tensor([0]))


def test_sit_xl2_parameter_count():
    # DiT-XL/2's 675,129,632 counts its frozen pos_embed Parameter (we keep it as a buffer) and the
    # 1152·16 + 16 weights of the learned-sigma output half that flow-matching SiT never uses.
    with torch.device("meta"):
        net = DiT(dit_preset("SiT-XL/2", input_size=32, in_channels=4))
    assert count_parameters(net) + net.pos_embed.numel() + (1152 * 16 + 16) == 675_129_632
