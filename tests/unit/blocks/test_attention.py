from __future__ import annotations

import functools

import pytest
import torch

from speedrun_diffusion.lightning_modules.blocks import AdaLNModulation, Attention, Mlp, RMSNorm, RoPE2D, modulate
from speedrun_diffusion.lightning_modules.blocks.attention import (
    CPU_EXPLICIT_ATTENTION_MAX_TOKENS,
    dot_product_attention,
)
from tests.conftest import load_case, reference_cases, with_prefix


def _by_hand(attn: Attention, x: torch.Tensor, v_override: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ/√d) v written out, with the module's own weights and formula QK-norm."""
    b, n, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(d, dim=-1)
    q, k, v = (t.reshape(b, n, h, dh).transpose(1, 2) for t in (q, k, v))
    if isinstance(attn.q_norm, RMSNorm):
        eps = torch.finfo(x.dtype).eps
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + eps) * attn.q_norm.weight
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + eps) * attn.k_norm.weight
    if v_override is not None:
        v = v_override
    weights = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, d)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_equals_hand_written_softmax(qk_norm: bool):
    attn = Attention(16, 4, qk_norm=qk_norm)
    if qk_norm:
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, 16)
    out, v = attn(x)
    assert out.shape == (2, 6, 16) and v.shape == (2, 4, 6, 4)
    torch.testing.assert_close(out, _by_hand(attn, x))
    expected_v = (x @ attn.qkv.weight[32:].T + attn.qkv.bias[32:]).reshape(2, 6, 4, 4).transpose(1, 2)
    torch.testing.assert_close(v, expected_v)


@pytest.mark.parametrize("tokens", [16, CPU_EXPLICIT_ATTENTION_MAX_TOKENS, CPU_EXPLICIT_ATTENTION_MAX_TOKENS + 1])
def test_dot_product_attention_matches_float32_sdpa_in_every_dtype_path(tokens: int):
    """fp32 goes to SDPA unchanged; under bf16 autocast short sequences take the explicit path, long ones
    SDPA; both agree with the fp32 result (values and gradients) to bf16 precision."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, tokens, 32, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(dot_product_attention(q, k, v), ref)
    grads_ref = torch.autograd.grad(ref.sum(), (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dot_product_attention(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=0)
    for g, g_ref in zip(torch.autograd.grad(out.float().sum(), (q, k, v)), grads_ref):
        torch.testing.assert_close(g, g_ref, atol=0.1, rtol=0.05)


def test_value_residual_mixes_v1():
    attn = Attention(16, 2, value_residual=True)
    # one element (FSDP2 cannot shard 0-dim parameters); the official 0-dim scalar still loads
    assert attn.v1_lambda.shape == (1,) and attn.v1_lambda.item() == 0.5
    attn.load_state_dict({**attn.state_dict(), "v1_lambda": torch.tensor(0.5)})
    x, v1 = torch.randn(2, 5, 16), torch.randn(2, 2, 5, 8)
    plain, v_raw = attn(x)
    with torch.no_grad():
        attn.v1_lambda.fill_(1.0)
    out, v_returned = attn(x, v1=v1)
    torch.testing.assert_close(out, _by_hand(attn, x, v_override=v1))
    torch.testing.assert_close(v_returned, v_raw)  # the returned v is the raw one, before mixing
    with torch.no_grad():
        attn.v1_lambda.fill_(0.25)
    torch.testing.assert_close(attn(x, v1=v1)[0], _by_hand(attn, x, v_override=0.25 * v1 + 0.75 * v_raw))
    # without the λ parameter (block 0) a passed v1 does not change anything
    block0 = Attention(16, 2)
    assert block0.v1_lambda is None and "v1_lambda" not in block0.state_dict()
    torch.testing.assert_close(block0(x, v1=v1)[0], block0(x)[0])


def test_rope_makes_attention_translation_invariant():
    grid = 6
    attn, rope = Attention(16, 2), RoPE2D(8, grid)
    x = torch.randn(1, 4, 16)
    rows, cols = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 2, 1, 3])
    out = attn(x, rope, rows * grid + cols)[0]
    for dr, dc in [(1, 0), (3, 2), (0, 2)]:  # shifting every token by the same offset keeps all logits
        torch.testing.assert_close(attn(x, rope, (rows + dr) * grid + cols + dc)[0], out, atol=1e-5, rtol=1e-5)
    # moving a single token changes relative positions, hence the output
    assert not torch.allclose(attn(x, rope, rows * grid + cols.flip(0))[0], out, atol=1e-4)


@pytest.mark.parametrize("path", reference_cases("srdit", "sit_forward_eval"), ids=lambda p: p.stem)
def test_official_srdit_blocks_0_and_1(path):
    """Blocks 0 and 1 of the official SR-DiT, composed from these blocks, reproduce its intermediates."""
    spec, data = load_case(path)
    cfg, derived, tol = spec["config"], spec["derived"], spec["tolerance"]
    sub = functools.partial(with_prefix, data)
    dim, heads = cfg["hidden_size"], cfg["num_heads"]
    rope = RoPE2D(derived["head_dim"], derived["grid"])
    rope.load_state_dict(sub("param/feat_rope."))
    norm = RMSNorm(dim, eps=1e-6, affine=False)
    im = sub("intermediate/")
    x = torch.cat([im["cls_embed"][:, None], im["patch_tokens"]], dim=1) + data["param/pos_embed"]
    c = im["t_emb"] + im["y_emb"]
    hw = derived["grid"] ** 2
    ids_full = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(hw)]).expand(x.shape[0], -1)
    v1 = None
    for i in range(2):
        ada = AdaLNModulation(dim, dim)
        attn = Attention(dim, heads, qk_norm=True, value_residual=i > 0)
        mlp = Mlp(dim, int(dim * cfg["mlp_ratio"]))
        ada.load_state_dict(sub(f"param/blocks.{i}.adaLN_modulation."))
        attn.load_state_dict(sub(f"param/blocks.{i}.attn."))
        mlp.load_state_dict(sub(f"param/blocks.{i}.mlp."))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = ada(c)
        a, v = attn(modulate(norm(x), shift_a, scale_a), rope, ids_full, v1)
        x = x + gate_a[:, None] * a
        x = x + gate_m[:, None] * mlp(modulate(norm(x), shift_m, scale_m))
        if i == 0:
            v1 = v
            torch.testing.assert_close(v, im["v1"], atol=tol["atol"], rtol=tol["rtol"])
        torch.testing.assert_close(x, im[f"block_{i:02d}"], atol=tol["atol"], rtol=tol["rtol"])
