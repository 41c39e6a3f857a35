from __future__ import annotations

import pytest
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


def _composite_rms_norm(x, weight, eps):
    """What ``F.rms_norm`` computes for a bf16 x and an fp32 weight (torch's composite fallback): fp32 math, the
    result rounded to x's dtype — written out, so the test does not depend on torch keeping that fallback."""
    xf = x.float()
    eps = torch.finfo(torch.float32).eps if eps is None else eps
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)


@pytest.mark.parametrize("eps", [1e-6, None])
def test_rmsnorm_under_bf16_autocast_is_the_fused_kernel_with_unchanged_numerics(eps):
    """bf16 x with the fp32 weight: torch's fused kernel runs (not the mixed-dtype fallback that warns "Cannot
    dispatch to fused implementation"), with the same values and gradients as that fallback bit for bit, within
    bf16 rounding of the formula."""
    import warnings

    import torch.nn.functional as F
    from torch.profiler import profile

    norm = RMSNorm(64, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64))
    x = (torch.randn(2, 3, 17, 64) * 0.3).bfloat16().requires_grad_()
    grad = torch.randn(2, 3, 17, 64).bfloat16()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = F.rms_norm(x, (64,), norm.weight, eps)  # the call RMSNorm made before: mixed dtypes
    before_grads = torch.autograd.grad(before, (x, norm.weight), grad)
    with torch.autocast("cpu", dtype=torch.bfloat16), profile() as trace:
        y = norm(x)
    grads = torch.autograd.grad(y, (x, norm.weight), grad)
    assert "aten::_fused_rms_norm" in {event.name for event in trace.events()}
    assert y.dtype == torch.bfloat16 and torch.equal(y, before)
    assert all(torch.equal(a, b) for a, b in zip(grads, before_grads))
    torch.testing.assert_close(y.float(), _composite_rms_norm(x.detach(), norm.weight.detach(), eps).float(),
                               atol=2e-2, rtol=1e-2)
