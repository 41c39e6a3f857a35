"""Differentiable augmentation before the discriminator (Zhao et al. 2020 "DiffAugment"; StyleGAN-T variant
used by RAE stage 1, App. E "Augmentations"; reference/rae_stage1/README "DiffAug").

All randomness is explicit: ``flags`` (3,) switch translation / colour / cutout on where ``flag <= prob``
and ``rand`` (7, B, 1, 1) holds the per-sample U[0, 1) draws r₀…r₆. ``DiffAug.draw`` produces them in the
official order (flags, then ``rand`` only if any flag is on), so a stored draw replays exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def translate(x: Tensor, r_h: Tensor, r_w: Tensor, ratio: float = 0.125) -> Tensor:
    """Integer shift by t = ⌊r·(2δ+1)⌋ − δ per axis, δ = round(ratio·size), zero fill: out[i, j] = x[i+t_h, j+t_w].

    ``r_h``/``r_w`` (B, 1, 1) in [0, 1); t is computed in float32 as the official code.
    """
    b, _, h, w = x.shape
    dh, dw = round(h * ratio), round(w * ratio)  # Python round (half to even), as the official code
    t_h = torch.floor(r_h.float() * (2 * dh + 1)).long() - dh
    t_w = torch.floor(r_w.float() * (2 * dw + 1)).long() - dw
    rows = torch.arange(h, device=x.device).view(1, h, 1) + t_h.view(b, 1, 1).to(x.device)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + t_w.view(b, 1, 1).to(x.device)
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    out = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1), cols.clamp(0, w - 1)].permute(0, 3, 1, 2)
    return out * inside.unsqueeze(1).to(x.dtype)


def color(x: Tensor, r_brightness: Tensor, r_saturation: Tensor, r_contrast: Tensor) -> Tensor:
    """Brightness x + (r₂ − ½); saturation (x − mean_c)·2r₃ + mean_c; contrast (x − mean_chw)·(r₄ + ½) + mean_chw.

    The r's hold one value per sample (any shape with B elements).
    """
    b = x.shape[0]
    r_brightness, r_saturation, r_contrast = (r.reshape(b, 1, 1, 1) for r in (r_brightness, r_saturation, r_contrast))
    x = x + (r_brightness - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (r_saturation * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (r_contrast + 0.5) + mean


def cutout(x: Tensor, r_h: Tensor, r_w: Tensor, ratio: float = 0.2) -> Tensor:
    """Zero a round(ratio·H) × round(ratio·W) patch centred at ⌊r·(size + 1 − patch mod 2)⌋, clipped at borders."""
    b, _, h, w = x.shape
    ch, cw = round(h * ratio), round(w * ratio)
    if ch == 0 or cw == 0:
        return x
    o_h = torch.floor(r_h.float() * (h + (1 - ch % 2))).long().view(b, 1, 1).to(x.device)
    o_w = torch.floor(r_w.float() * (w + (1 - cw % 2))).long().view(b, 1, 1).to(x.device)
    rows = (torch.arange(ch, device=x.device).view(1, ch, 1) + o_h - ch // 2).clamp(0, h - 1)
    cols = (torch.arange(cw, device=x.device).view(1, 1, cw) + o_w - cw // 2).clamp(0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[torch.arange(b, device=x.device).view(b, 1, 1), rows, cols] = 0
    return x * mask.unsqueeze(1)


class DiffAug(nn.Module):
    """translation → colour → cutout, each on with probability ``prob`` per batch (RAE: prob 1, cutout 0).

    ``forward(x, flags=None, rand=None, generator=None)`` casts ``x`` to float32 first (as the official
    ``DiffAug.aug``, so the output is float32 whatever the input dtype) and draws missing randomness from
    ``generator`` (torch's global RNG if None). Cutout with ratio 0 is a no-op, but r₅, r₆ are still drawn.
    """

    def __init__(self, prob: float = 1.0, cutout: float = 0.2, translation: float = 0.125) -> None:
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"DiffAug prob must be in [0, 1], got {prob}")
        self.prob = prob
        self.cutout = cutout
        self.translation = translation

    def draw(self, batch_size: int, generator: torch.Generator | None = None, flags: Tensor | None = None
             ) -> tuple[Tensor, Tensor | None]:
        """(flags (3,), rand (7, B, 1, 1) or None), drawn in the official order."""
        if flags is None:
            flags = torch.rand(3, generator=generator)
        rand = torch.rand(7, batch_size, 1, 1, generator=generator) if bool((flags <= self.prob).any()) else None
        return flags, rand

    def forward(self, x: Tensor, flags: Tensor | None = None, rand: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        x = x.float()
        if self.prob < 1e-6:  # the official code returns before drawing anything
            return x
        if flags is None or rand is None:
            flags, drawn = self.draw(x.shape[0], generator, flags)
            rand = drawn if rand is None else rand
        on = [bool(f <= self.prob) for f in flags.tolist()]
        if not any(on):
            return x
        if rand is None or rand.shape != (7, x.shape[0], 1, 1):
            raise ValueError(f"DiffAug rand must have shape (7, {x.shape[0]}, 1, 1), got "
                             f"{None if rand is None else tuple(rand.shape)}")
        r = rand.to(device=x.device, dtype=torch.float32)
        if on[0]:
            x = translate(x, r[0], r[1], self.translation)
        if on[1]:
            x = color(x, r[2], r[3], r[4])
        if on[2] and self.cutout > 0:
            x = cutout(x, r[5], r[6], self.cutout)
        return x

    def extra_repr(self) -> str:
        return f"prob={self.prob}, cutout={self.cutout}, translation={self.translation}"


__all__ = ["DiffAug", "color", "cutout", "translate"]
