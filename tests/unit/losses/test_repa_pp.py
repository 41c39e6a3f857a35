"""REPA++ (SpeedDiff A.2.5): adapters, negative cosine, depth-8 feature capture, training signal."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.losses.repa import negative_cosine
from speedrun_diffusion.lightning_modules.losses.repa_pp import REPAPlusPlus, capture_block_output, latent_tokens
from speedrun_diffusion.lightning_modules.networks.dit import DiT, refined_dit_preset


def test_terms_are_negative_cosines_of_the_adapters():
    m = REPAPlusPlus(latent_channels=4, hidden_size=8, target_dim=6, adapter_dim=16, diffusion_weight=0.5)
    assert [type(l).__name__ for l in m.latent_adapter] == ["Linear", "SiLU", "Linear"]
    z0, feats, y = torch.randn(2, 4, 3, 3), torch.randn(2, 9, 8), torch.randn(2, 9, 6)
    out = m(z0, feats, y)
    lat = negative_cosine(m.latent_adapter(z0.flatten(2).transpose(1, 2)), y).mean()
    dif = negative_cosine(m.diffusion_adapter(feats), y).mean()
    torch.testing.assert_close(out["repa_latent"], lat)
    torch.testing.assert_close(out["repa_diffusion"], dif)
    torch.testing.assert_close(out["repa_pp"], lat + 0.5 * dif)
    assert -1 <= lat <= 1 and -1 <= dif <= 1
    with pytest.raises(ValueError, match="same"):
        m(z0, feats, torch.randn(2, 16, 6))


def test_latent_tokens_follow_raster_order():
    z = torch.arange(2 * 2 * 3).float().reshape(1, 2, 2, 3)
    tokens = latent_tokens(z)
    assert tokens.shape == (1, 6, 2)
    torch.testing.assert_close(tokens[0, 4], z[0, :, 1, 1])  # token r·w + c


def test_capture_block_output_is_the_hidden_state_after_that_block():
    net = DiT(refined_dit_preset("Refined-DiT-B", input_size=4, in_channels=4, hidden_size=16, depth=3, num_heads=2,
                                 num_classes=3, swiglu_multiple_of=8)).eval()
    x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([0, 1])
    with capture_block_output(net, 2) as store:
        net(x, t, y)
    tokens, c = net.embed(x, t, y)
    cond = net.global_modulation(c)
    for block in net.blocks[:2]:
        tokens, _ = block(tokens, cond, rope=net.feat_rope)
    torch.testing.assert_close(store["features"], tokens)
    net(x, t, y)  # the hook is gone after the context
    with pytest.raises(ValueError, match="depth 4"):
        with capture_block_output(net, 4):
            pass


def test_adapters_learn_to_align():
    torch.manual_seed(0)
    m = REPAPlusPlus(latent_channels=4, hidden_size=8, target_dim=6, adapter_dim=32)
    z0, feats = torch.randn(4, 4, 2, 2), torch.randn(4, 4, 8)
    y = torch.randn(4, 4, 6)
    opt = torch.optim.Adam(m.parameters(), lr=3e-2)
    first = None
    for _ in range(20):
        loss = m(z0, feats, y)["repa_pp"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5  # both terms move towards −1
    z0.requires_grad_(True)
    feats.requires_grad_(True)
    m(z0, feats, y)["repa_pp"].backward()
    assert z0.grad.abs().sum() > 0 and feats.grad.abs().sum() > 0  # nothing detached inside
