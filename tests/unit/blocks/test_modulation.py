from __future__ import annotations

import torch

from speedrun_diffusion.lightning_modules.blocks import AdaLNModulation, BlockModulationBias, GlobalModulation, modulate


def test_modulate_broadcasts_over_tokens():
    x, shift, scale = torch.randn(2, 3, 4), torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])
    torch.testing.assert_close(modulate(x, torch.zeros(2, 4), torch.zeros(2, 4)), x)


def test_adaln_zero_outputs_zero_at_init_and_chunks():
    ada = AdaLNModulation(8, 5)
    chunks = ada(torch.randn(3, 8))
    assert len(chunks) == 6 and all(ch.shape == (3, 5) for ch in chunks)
    assert all(torch.count_nonzero(ch) == 0 for ch in chunks)
    assert set(ada.state_dict()) == {"1.weight", "1.bias"}  # official `adaLN_modulation.1.*` keys
    assert len(AdaLNModulation(8, 5, num_chunks=2)(torch.randn(3, 8))) == 2


def test_adaln_chunks_are_silu_linear_in_order():
    ada = AdaLNModulation(8, 5, num_chunks=3, zero_init=False)
    c = torch.randn(3, 8)
    full = torch.nn.functional.silu(c) @ ada[1].weight.T + ada[1].bias
    for i, ch in enumerate(ada(c)):
        torch.testing.assert_close(ch, full[:, 5 * i : 5 * (i + 1)])


def test_global_modulation_plus_block_bias():
    glob = GlobalModulation(8, 5)
    c = torch.randn(3, 8)
    g = glob(c)
    assert g.shape == (3, 30) and torch.count_nonzero(g) == 0  # zero-initialised: adaLN-Zero style
    bias = BlockModulationBias(5)
    assert bias.scale_shift_table.shape == (6, 5)
    # PixArt-α init randn/√dim: non-zero, small
    assert 0 < bias.scale_shift_table.std().item() < 1.5 / 5**0.5
    g = torch.randn(3, 30)
    chunks = bias(g)
    assert len(chunks) == 6
    for i, ch in enumerate(chunks):
        torch.testing.assert_close(ch, g[:, 5 * i : 5 * (i + 1)] + bias.scale_shift_table[i])
    zero = BlockModulationBias(5, num_chunks=2, zero_init=True)
    assert torch.count_nonzero(zero.scale_shift_table) == 0
    torch.testing.assert_close(torch.cat(zero(g[:, :10]), dim=-1), g[:, :10])


def test_global_modulation_gradients_reach_both_tables():
    glob, bias = GlobalModulation(4, 3, zero_init=False), BlockModulationBias(3)
    sum(ch.sum() * (i + 1) for i, ch in enumerate(bias(glob(torch.randn(2, 4))))).backward()
    assert glob[1].weight.grad.abs().sum() > 0 and bias.scale_shift_table.grad.abs().sum() > 0
