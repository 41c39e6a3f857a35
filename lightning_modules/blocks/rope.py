"""2-D axial rotary position embedding (RoPE, Su et al. 2021, eq. 34; axial 2-D form of EVA-02 / SR-DiT).

Equals SR-DiT's ``VisionRotaryEmbeddingFast(dim=head_dim/2, pt_seq_len=grid)`` (SR-DiT README "2-D RoPE"):
per head, channels [0, Dh/2) rotate with the grid **row** r, channels [Dh/2, Dh) with the **column** c of
the flattened position p = r·G + c; inside each half the adjacent pair (2j, 2j+1) turns by pos·θ_j with
θ_j = theta^(−2j/(Dh/2)), j < Dh/4, and (a, b) → (a cos − b sin, b cos + a sin).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def grid_position_ids(grid_size: int, device: torch.device | str | None = None) -> Tensor:
    """Flattened raster position ids 0 … G²−1 (p = r·G + c), int64: the default ``pos_ids`` of a full grid."""
    return torch.arange(grid_size * grid_size, device=device, dtype=torch.long)


def rope_grid_tables(head_dim: int, grid_size: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """(cos, sin) tables of shape (G², head_dim), float32, row p = r·G + c holds [angles(r) | angles(c)].

    Angles are computed in float64 and rounded once, so large grids stay accurate to float32 precision.
    """
    if head_dim % 4 != 0:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4 (two axes × channel pairs), got {head_dim}")
    quarter = head_dim // 4
    # θ_j = theta^(−2j/(Dh/2)) = theta^(−j/(Dh/4))
    inv_freq = theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    axis = torch.arange(grid_size, dtype=torch.float64)[:, None] * inv_freq  # (G, Dh/4)
    axis = axis.repeat_interleave(2, dim=-1)  # channels 2j and 2j+1 share θ_j -> (G, Dh/2)
    half = head_dim // 2
    rows = axis[:, None, :].expand(grid_size, grid_size, half)  # first half: row index r
    cols = axis[None, :, :].expand(grid_size, grid_size, half)  # second half: column index c
    angles = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, head_dim)
    return angles.cos().float(), angles.sin().float()


def _rotate_pairs(x: Tensor) -> Tensor:
    """(a, b) → (−b, a) on adjacent channel pairs: multiplying by sin completes the 2-D rotation."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-b, a), dim=-1).flatten(-2)


class RoPE2D(nn.Module):
    """Rotate (B, heads, N, head_dim) queries/keys by their 2-D grid positions (SR-DiT README "2-D RoPE").

    ``freqs_cos``/``freqs_sin`` are persistent buffers (official keys ``feat_rope.freqs_cos/sin``).
    Call forms (the official leading-token rule, SR-DiT ``rope`` case):

    * no ids, N ≥ G²: the leading N − G² tokens (cls/register) stay unrotated, the rest use raster order;
    * ids of length K == N: the leading max(0, N − G²) tokens stay unrotated and the rest use
      ``ids[..., N − G²:]`` (dense blocks pass [0, 0, 1, …, G²−1]); with K ≤ G² every token is rotated at its
      id (routed tokens keep their positions; id 0 is the identity, so a kept cls token is unchanged);
    * ids of length K < N: the leading N − K tokens stay unrotated, the tail uses the ids.

    ids are (K,) shared by the batch or (B, K) per sample.
    """

    def __init__(self, head_dim: int, grid_size: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.grid_size = grid_size
        self.theta = theta
        cos, sin = rope_grid_tables(head_dim, grid_size, theta)
        # persistent: official state dicts carry these tables, so they load key-for-key
        self.register_buffer("freqs_cos", cos)
        self.register_buffer("freqs_sin", sin)

    @property
    def num_positions(self) -> int:
        return self.grid_size * self.grid_size

    def forward(self, x: Tensor, pos_ids: Tensor | None = None) -> Tensor:
        n = x.shape[-2]
        hw = self.num_positions
        if pos_ids is None:
            if n < hw:
                raise ValueError(f"RoPE2D without pos_ids needs at least {hw} tokens, got {n}; pass pos_ids")
            n_lead = n - hw
            cos, sin = self.freqs_cos, self.freqs_sin
        else:
            k = pos_ids.shape[-1]
            if k > n:
                raise ValueError(f"RoPE2D got {k} position ids for only {n} tokens")
            n_lead = max(0, n - hw) if k == n else n - k
            ids = pos_ids[..., k - (n - n_lead):]
            cos, sin = self.freqs_cos[ids], self.freqs_sin[ids]
            if ids.dim() == 2:  # per-sample ids (B, K) -> broadcast over heads
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        tail = x[..., n_lead:, :]
        rotated = tail * cos + _rotate_pairs(tail) * sin
        if n_lead == 0:
            return rotated
        return torch.cat([x[..., :n_lead, :], rotated], dim=-2)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, grid_size={self.grid_size}, theta={self.theta}"
