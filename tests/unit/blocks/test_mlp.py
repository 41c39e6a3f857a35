from __future__ import annotations

import torch
import torch.nn.functional as F

from speedrun_diffusion.lightning_modules.blocks import Mlp, SwiGLU, swiglu_hidden_dim


def test_mlp_shapes_and_formula():
    mlp = Mlp(8, 32, out_dim=6)
    x = torch.randn(2, 5, 8)
    y = mlp(x)
    assert y.shape == (2, 5, 6)
    expected = mlp.fc2(F.gelu(mlp.fc1(x), approximate="tanh"))
    torch.testing.assert_close(y, expected)
    assert Mlp(8, 32)(x).shape == (2, 5, 8)
    assert set(mlp.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}


def test_swiglu_formula_and_shapes():
    ffn = SwiGLU(8, 12, out_dim=4, bias=False)
    assert ffn.w12.weight.shape == (24, 8) and ffn.w3.weight.shape == (4, 12) and ffn.w12.bias is None
    x = torch.randn(3, 8)
    w1, w2 = ffn.w12.weight[:12], ffn.w12.weight[12:]
    expected = (F.silu(x @ w1.T) * (x @ w2.T)) @ ffn.w3.weight.T
    torch.testing.assert_close(ffn(x), expected)
    assert SwiGLU(8, 12)(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_swiglu_hidden_dim_two_thirds_rule():
    assert swiglu_hidden_dim(768, 4.0) == 2048
    assert swiglu_hidden_dim(1152, 4.0) == 3072
    assert swiglu_hidden_dim(100, 4.0) == 266
    assert swiglu_hidden_dim(100, 4.0, multiple_of=8) == 272
    assert swiglu_hidden_dim(96, 4.0, multiple_of=256) == 256
