from __future__ import annotations

import functools
import math

import pytest
import torch

from speedrun_diffusion.lightning_modules.blocks import (
    GaussianFourierEmbedding,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    patchify,
    sincos_2d_pos_embed,
    sinusoidal_embedding,
    unpatchify,
)
from tests.conftest import load_case, reference_cases, with_prefix

SIT_CASES = reference_cases("srdit", "sit_forward_eval")


def test_sinusoidal_known_values():
    emb = sinusoidal_embedding(torch.zeros(2), 8)
    torch.testing.assert_close(emb, torch.tensor([[1.0] * 4 + [0.0] * 4] * 2))  # cos(0) = 1 first, sin(0) = 0
    t = torch.tensor([0.3])
    emb = sinusoidal_embedding(t, 6, scale=1000.0)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(3) / 3)
    torch.testing.assert_close(emb, torch.cat([torch.cos(300 * freqs), torch.sin(300 * freqs)])[None])
    swapped = sinusoidal_embedding(t, 6, scale=1000.0, cos_first=False)
    torch.testing.assert_close(swapped, torch.cat([emb[:, 3:], emb[:, :3]], dim=-1))
    odd = sinusoidal_embedding(t, 7)
    assert odd.shape == (1, 7) and odd[0, -1] == 0 and odd.dtype == torch.float32


def test_timestep_embedder_shapes_keys_and_dtype():
    emb = TimestepEmbedder(16, frequency_dim=32)
    assert set(emb.state_dict()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}
    t = torch.rand(3)
    torch.testing.assert_close(emb(t), emb.mlp(sinusoidal_embedding(t, 32)))
    assert emb.to(torch.float64)(t).dtype == torch.float64


def test_gaussian_fourier_embedding():
    emb = GaussianFourierEmbedding(64, scale=16.0)
    assert list(emb.parameters()) == [] and "W" in emb.state_dict() and emb.W.shape == (32,)
    assert 8 < emb.W.std().item() < 24  # W ~ N(0, 16²)
    x = torch.tensor([0.0, 0.25])
    out = emb(x)
    assert out.shape == (2, 64)
    torch.testing.assert_close(out[0], torch.cat([torch.zeros(32), torch.ones(32)]))
    torch.testing.assert_close(out[1, :32], torch.sin(2 * math.pi * 0.25 * emb.W))


def test_label_dropout_rate_matches_probability():
    n, p = 20_000, 0.1
    emb = LabelEmbedder(5, 4, dropout_prob=p)
    labels = torch.randint(0, 5, (n,))
    dropped = emb.drop_labels(labels, generator=torch.Generator().manual_seed(1))
    is_null = dropped == 5
    # binomial(20 000, 0.1): sd ≈ 42, so ±4 sd is [1830, 2170] (p = 0.09 or 0.11 would land outside)
    sd = math.sqrt(n * p * (1 - p))
    assert abs(is_null.sum().item() - n * p) < 4 * sd
    assert torch.equal(dropped[~is_null], labels[~is_null])
    assert emb.embedding_table.weight.shape == (6, 4)


def test_label_force_drop_and_eval_never_drops():
    emb = LabelEmbedder(5, 4, dropout_prob=0.5)
    labels = torch.arange(5).repeat(200)
    emb.eval()
    torch.testing.assert_close(emb(labels), emb.embedding_table(labels))
    assert torch.equal(emb(labels, train=False), emb.embedding_table(labels))
    force = torch.zeros(1000, dtype=torch.bool)
    force[::3] = True
    expected = torch.where(force, 5, labels)
    assert torch.equal(emb.drop_labels(labels, force_drop=force), expected)
    torch.testing.assert_close(emb(labels, force_drop=force), emb.embedding_table(expected))
    emb.train()
    assert (emb(labels) != emb.embedding_table(labels)).any(dim=-1).any()  # training drops some
    never = LabelEmbedder(5, 4, dropout_prob=0.0).train()
    assert torch.equal(never(labels), never.embedding_table(labels))  # p = 0 never drops, even in training


def test_patchify_channel_order_and_inverse():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 6, 12)
    # token 4 = patch row 1, col 1; channel index (pr, pc, c) = (1, 0, 2) -> pixel (3, 2) of channel 2
    assert tokens[1, 4, (1 * 2 + 0) * 3 + 2] == x[1, 2, 3, 2]
    assert torch.equal(unpatchify(tokens, 2, 3, height=4, width=6), x)
    square = torch.randn(1, 5, 8, 8)
    assert torch.equal(unpatchify(patchify(square, 4), 4, 5), square)
    with pytest.raises(ValueError):
        patchify(torch.randn(1, 3, 5, 4), 2)
    with pytest.raises(ValueError):
        unpatchify(torch.randn(1, 6, 12), 2, 3)


def test_patch_embed_is_linear_map_of_patchified_pixels():
    embed = PatchEmbed(3, 8, 2)
    x = torch.randn(2, 3, 4, 6)
    out = embed(x)
    assert out.shape == (2, 6, 8) and "proj.weight" in embed.state_dict()
    # conv weight (D, C, pr, pc) reordered to the (pr, pc, C) token layout gives the same map
    w = embed.proj.weight.permute(0, 2, 3, 1).reshape(8, -1)
    torch.testing.assert_close(out, patchify(x, 2) @ w.T + embed.proj.bias, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        embed(torch.randn(1, 3, 5, 6))


def test_sincos_layout():
    table = sincos_2d_pos_embed(8, 3, num_extra_tokens=2)
    assert table.shape == (11, 8) and table.dtype == torch.float32
    assert torch.count_nonzero(table[:2]) == 0
    r, c = 1, 2
    row = table[2 + r * 3 + c]
    omega = 10000.0 ** (-torch.arange(2, dtype=torch.float64) / 2)
    expected = torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega), torch.cos(r * omega)])
    torch.testing.assert_close(row, expected.float())


@pytest.mark.parametrize("path", SIT_CASES, ids=lambda p: p.stem)
def test_embeddings_equal_official_srdit(path):
    """pos_embed buffer, t / y embedders and the patch embedding against the official SR-DiT intermediates."""
    spec, data = load_case(path)
    cfg, derived, tol = spec["config"], spec["derived"], spec["tolerance"]
    sub = functools.partial(with_prefix, data)
    dim = cfg["hidden_size"]
    ours = sincos_2d_pos_embed(dim, derived["grid"], num_extra_tokens=1)
    torch.testing.assert_close(ours[None], data["param/pos_embed"], atol=1e-6, rtol=1e-5)
    close = dict(atol=tol["atol"], rtol=tol["rtol"])
    t_emb = TimestepEmbedder(dim)
    t_emb.load_state_dict(sub("param/t_embedder."))
    torch.testing.assert_close(t_emb(data["input/t"]), data["intermediate/t_emb"], **close)
    y_emb = LabelEmbedder(cfg["num_classes"], dim, cfg["class_dropout_prob"]).eval()
    y_emb.load_state_dict(sub("param/y_embedder."))
    torch.testing.assert_close(y_emb(data["input/y"]), data["intermediate/y_emb"], **close)
    x_emb = PatchEmbed(cfg["in_channels"], dim, cfg["patch_size"])
    x_emb.load_state_dict(sub("param/x_embedder."))
    torch.testing.assert_close(x_emb(data["input/x"]), data["intermediate/patch_tokens"], **close)
