from __future__ import annotations

import torch

from speedrun_diffusion.lightning_modules.blocks import RMSNorm


def test_rmsnorm_matches_formula_with_weight():
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(3, 5, 16)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rmsnorm_without_affine_has_unit_rms_and_no_params():
    norm = RMSNorm(32, affine=False)
    assert list(norm.parameters()) == [] and norm.weight is None
    y = norm(torch.randn(4, 7, 32) * 5 + 2)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, 7), atol=1e-4, rtol=0)


def test_rmsnorm_eps_none_is_machine_epsilon():
    # tiny inputs make eps dominate, so the choice of eps is visible
    x = torch.full((2, 8), 1e-4)
    default = RMSNorm(8, eps=None, affine=False)(x)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(default, x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    assert not torch.allclose(default, RMSNorm(8, eps=1e-6, affine=False)(x))


def test_rmsnorm_state_dict_key_matches_torch():
    assert set(RMSNorm(8).state_dict()) == set(torch.nn.RMSNorm(8).state_dict()) == {"weight"}
