from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.blocks import RoPE2D, grid_position_ids, rope_grid_tables

HEAD_DIM, GRID = 16, 5


def test_tables_shape_buffers_and_channel_layout():
    rope = RoPE2D(HEAD_DIM, GRID)
    assert rope.freqs_cos.shape == (GRID * GRID, HEAD_DIM)
    assert set(rope.state_dict()) == {"freqs_cos", "freqs_sin"} and list(rope.parameters()) == []
    cos, sin = rope_grid_tables(HEAD_DIM, GRID)
    torch.testing.assert_close(rope.freqs_cos, cos)
    # position (r=2, c=3): first half turns by r·θ_j, second half by c·θ_j, pairs share θ_j
    theta = 10000.0 ** (-2 * torch.arange(HEAD_DIM // 4, dtype=torch.float64) / (HEAD_DIM / 2))
    angles = torch.cat([(2 * theta).repeat_interleave(2), (3 * theta).repeat_interleave(2)])
    torch.testing.assert_close(sin[2 * GRID + 3], angles.sin().float())
    torch.testing.assert_close(cos[0], torch.ones(HEAD_DIM))
    with pytest.raises(ValueError):
        RoPE2D(6, 4)


def test_rotation_of_one_pair_by_hand():
    rope = RoPE2D(4, 3)  # θ_0 = 1 for both axes: pair 0 turns by r rad, pair 1 by c rad
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(1, 1, 1, 4)
    out = rope(x, torch.tensor([1 * 3 + 2]))  # r = 1, c = 2
    a, c = torch.tensor(1.0), torch.tensor(2.0)
    expected = torch.stack([1 * a.cos() - 2 * a.sin(), 2 * a.cos() + 1 * a.sin(), 3 * c.cos() - 4 * c.sin(), 4 * c.cos() + 3 * c.sin()])
    torch.testing.assert_close(out.flatten(), expected)


def test_norm_preserved():
    x = torch.randn(2, 3, GRID * GRID, HEAD_DIM)
    out = RoPE2D(HEAD_DIM, GRID)(x)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(out, x)


def test_relative_position_property_per_axis():
    # <R(p) q, R(p') k> depends only on (r − r', c − c'): shift both positions by the same (dr, dc)
    rope = RoPE2D(HEAD_DIM, GRID).double()
    q, k = torch.randn(2, 1, 1, 1, HEAD_DIM, dtype=torch.float64).unbind(0)

    def score(rq: int, cq: int, rk: int, ck: int) -> torch.Tensor:
        ids_q, ids_k = torch.tensor([[rq * GRID + cq]]), torch.tensor([[rk * GRID + ck]])
        return (rope(q, ids_q) * rope(k, ids_k)).sum()

    base = score(0, 1, 2, 0)
    for dr, dc in [(1, 0), (0, 2), (2, 1)]:
        torch.testing.assert_close(score(dr, 1 + dc, 2 + dr, dc), base)
    # a different offset gives a different score (the property is not vacuous)
    assert not torch.isclose(score(0, 1, 3, 0), base)
    assert not torch.isclose(score(0, 1, 2, 1), base)


def test_ids_subset_equals_gather_of_full_rotation():
    rope = RoPE2D(HEAD_DIM, GRID)
    x = torch.randn(2, 2, GRID * GRID, HEAD_DIM)
    full = rope(x)
    ids = torch.tensor([[7, 0, 24, 3], [11, 12, 5, 6]])
    gather = lambda t: torch.stack([t[b][:, ids[b]] for b in range(2)])  # noqa: E731
    torch.testing.assert_close(rope(gather(x), ids), gather(full))
    shared = torch.tensor([4, 9, 1])
    torch.testing.assert_close(rope(x[:, :, shared], shared), full[:, :, shared])
    torch.testing.assert_close(rope(x, grid_position_ids(GRID)), full)


def test_leading_tokens_unrotated():
    rope = RoPE2D(HEAD_DIM, GRID)
    hw = GRID * GRID
    x = torch.randn(2, 2, hw + 2, HEAD_DIM)
    out = rope(x)  # no ids: 2 leading tokens kept, rest at raster positions
    torch.testing.assert_close(out[:, :, :2], x[:, :, :2])
    torch.testing.assert_close(out[:, :, 2:], rope(x[:, :, 2:]))
    # ids of length N > HW: leading N − HW unrotated, tail uses ids[N − HW:]
    ids_full = torch.cat([torch.zeros(2, dtype=torch.long), grid_position_ids(GRID)])
    torch.testing.assert_close(rope(x, ids_full), out)
    # ids shorter than N: leading N − K unrotated, tail rotated with the ids
    tail_ids = torch.tensor([[3, 8], [20, 1]])
    short = rope(x[:, :, :5], tail_ids)
    torch.testing.assert_close(short[:, :, :3], x[:, :, :3])
    torch.testing.assert_close(short[:, :, 3:], rope(x[:, :, 3:5], tail_ids))


def test_bad_calls_raise_and_dtype_follows_input():
    rope = RoPE2D(HEAD_DIM, GRID)
    with pytest.raises(ValueError):
        rope(torch.randn(1, 1, 3, HEAD_DIM))
    with pytest.raises(ValueError):
        rope(torch.randn(1, 1, 3, HEAD_DIM), torch.arange(4))
    assert rope(torch.randn(1, 1, GRID * GRID, HEAD_DIM, dtype=torch.bfloat16)).dtype == torch.bfloat16
