"""The power loss: a sigmoid-weighted loss on Haar-wavelet sub-bands of x̂ − x (SiD2 App. A.1, Table 2)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["haar_1d", "haar_subbands", "power_loss"]


def haar_1d(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Orthonormal Haar step along ``dim``: s_k = (i_2k + i_2k+1)/√2, d_k = (i_2k − i_2k+1)/√2 (SiD2 A.1)."""
    if x.shape[dim] % 2:
        raise ValueError(f"Haar transform needs an even size along dim {dim}, got {x.shape[dim]}")
    even, odd = x.unflatten(dim, (-1, 2)).unbind(dim + 1 if dim >= 0 else dim)
    return (even + odd) / math.sqrt(2.0), (even - odd) / math.sqrt(2.0)


def haar_subbands(x: Tensor, levels: int) -> list[tuple[Tensor, int]]:
    """Sub-bands of ``levels`` 2-D Haar steps on (B, C, H, W), each with its number of low passes l(s).

    One step (SiD2 A.1): rows first, W_r(I) = (L, H), then columns of each, W_c(L) = (LL, LH) and
    W_c(H) = (HL, HH); the next step transforms LL again. For levels = 2 on a 512² image this gives
    {LLLL, LLLH, LLHL, LLHH} at 128² (4, 3, 3, 2 low passes) and {LH, HL, HH} at 256² (1, 1, 0).
    ``levels = 0`` returns the input itself with l = 0. Orthonormal: Σ‖s‖² = ‖x‖².
    """
    details: list[list[tuple[Tensor, int]]] = []
    low, passes = x, 0
    for _ in range(levels):
        rows_low, rows_high = haar_1d(low, -1)  # along each row (the width axis)
        ll, lh = haar_1d(rows_low, -2)
        hl, hh = haar_1d(rows_high, -2)
        details.append([(lh, passes + 1), (hl, passes + 1), (hh, passes)])
        low, passes = ll, passes + 2
    # A.1 order: the smooth band, then the detail bands from the coarsest level up
    return [(low, passes)] + [band for level in reversed(details) for band in level]


def power_loss(
    error: Tensor, logsnr: Tensor, neg_dlogsnr_dt: Tensor, bias: float | Tensor, levels: int
) -> Tensor:
    """Per-sample PL(I) = Σ_s w_s‖s‖² / D, w_s = σ(λ_t + b_s)·(−dλ/dt), b_s = log(2)·l(s) − b (SiD2 App. A.1).

    ``error`` is I = x̂ − x (B, C, H, W); each averaging low pass raises the sub-band's log-SNR by
    log 2, hence the shift. With levels = 0 this is exp(−b) times the sigmoid loss (SiD2 eq. 4: σ(b − λ)·‖ε − ε̂‖²
    = exp(b)·σ(λ − b)·‖x − x̂‖²).
    Divided by D = C·H·W like the other losses here (a constant factor).
    """
    total = error.new_zeros(error.shape[0], dtype=torch.float32)
    lam = logsnr.float()
    for band, passes in haar_subbands(error.float(), levels):
        weight = torch.sigmoid(lam + math.log(2.0) * passes - bias) * neg_dlogsnr_dt.float()
        total = total + weight * band.pow(2).flatten(1).sum(1)
    return total / error[0].numel()
