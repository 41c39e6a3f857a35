"""Guidance as one composable denoiser: CFG, guidance interval, autoguidance, path-drop guidance.

out = guide + w·(cond − guide) elementwise (SR-DiT eq. 7), where guide is the unconditional
prediction (classifier-free guidance, Ho & Salimans 2022), the prediction of a weaker network
(autoguidance, Karras et al. 2024; RAE, SiD2 App. A), or the network with its sparse path dropped
(SR-DiT Sec. 3.7 path-drop guidance). Guidance is applied only where t (or λ(t)) lies in a
closed interval (Kynkäänniemi et al. 2024; SiD2 A.4 guidance_interval in log-SNR; RAE DiT^DH
``forward_with_cfg`` on t). Scale convention: w = 1 is the plain conditional prediction; SiD2's
"guidance = 1.0" (x̂ = (1 + g)·cond − g·uncond) is w = 1 + g = 2.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Union

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.diffusion.state import State, pack_state, state_parts
from speedrun_diffusion.lightning_modules.diffusion.vp import LogSNRSchedule

__all__ = ["GuidedDenoiser"]

Denoiser = Callable[[State, Tensor, Union[Tensor, None]], State]


def _rows(state: State, index: Tensor | None) -> State:
    """The rows ``index`` of every element (all rows when index is None)."""
    if index is None:
        return state
    return pack_state([p[index] for p in state_parts(state)], state)


def _cat(a: State, b: State) -> State:
    return pack_state([torch.cat([p, q]) for p, q in zip(state_parts(a), state_parts(b))], a)


class GuidedDenoiser:
    """Callable ``(x, t, y) -> prediction`` applying guidance to ``net_fn(x, t, y)``.

    Args:
        net_fn: the (conditional) denoiser ``(x, t, y) -> prediction``; x and the prediction are a
            tensor or a tuple of tensors with batch dimension first, t has shape (B,).
        scale: guidance weight w for every output (w = 1: no guidance, the guide is never called).
        guide_fn: autoguidance network ``(x, t, y) -> prediction``, called with the *same* labels.
            None selects CFG: net_fn on one doubled batch [x; x], [t; t], [y; null_label].
            Path-drop guidance (SR-DiT) is a guide_fn that drops the sparse path and the label,
            e.g. ``lambda x, t, y: net(x, t, torch.full_like(y, null), uncond=True)``.
        null_label: the "no class" id used by CFG (DESIGN: num_classes).
        interval: closed [low, high]; samples outside get the plain conditional prediction and,
            if no sample of the batch is inside, the guide is not evaluated at all.
        interval_on: "t" compares t itself; "logsnr" compares λ = schedule(t) (SiD2).
        schedule: the log-SNR schedule for ``interval_on="logsnr"``.
        scales: one weight per prediction element (e.g. SR-DiT's latent cfg and cls cfg; its
            "cls_cfg_scale <= 0 means conditional" is scale 1 here); overrides ``scale``.
    """

    def __init__(
        self,
        net_fn: Denoiser,
        scale: float = 1.0,
        guide_fn: Denoiser | None = None,
        null_label: int | None = None,
        interval: tuple[float, float] | None = None,
        interval_on: Literal["t", "logsnr"] = "t",
        schedule: LogSNRSchedule | None = None,
        scales: Sequence[float] | None = None,
    ) -> None:
        if interval_on not in ("t", "logsnr"):
            raise ValueError(f"interval_on must be 't' or 'logsnr', got {interval_on!r}")
        if interval_on == "logsnr" and interval is not None and schedule is None:
            raise ValueError("a log-SNR interval needs the schedule")
        if interval is not None and interval[0] > interval[1]:
            raise ValueError(f"empty guidance interval {interval}")
        self.net_fn = net_fn
        self.guide_fn = guide_fn
        self.scales = tuple(float(s) for s in scales) if scales is not None else None
        self.scale = float(scale)
        self.null_label = null_label
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        self.interval_on = interval_on
        self.schedule = schedule
        if guide_fn is None and null_label is None and not self._is_identity():
            raise ValueError("CFG (guide_fn=None) needs null_label")

    def _is_identity(self) -> bool:
        return all(s == 1.0 for s in (self.scales if self.scales is not None else (self.scale,)))

    def active(self, t: Tensor) -> Tensor:
        """Boolean (B,): samples whose t (or λ(t)) lies in the closed guidance interval."""
        if self.interval is None:
            return torch.ones(t.shape, dtype=torch.bool, device=t.device)
        low, high = self.interval
        # compare in float64 so the bounds are not rounded to the model dtype
        value = self.schedule(t.double()) if self.interval_on == "logsnr" else t.double()
        return (value >= low) & (value <= high)

    def __call__(self, x: State, t: Tensor, y: Tensor | None) -> State:
        """Guided prediction, same structure as ``net_fn``'s output."""
        if self._is_identity():
            return self.net_fn(x, t, y)
        active = self.active(t)
        if not bool(active.any()):
            return self.net_fn(x, t, y)
        index = None if bool(active.all()) else active.nonzero().squeeze(1)
        x_g, t_g = _rows(x, index), t if index is None else t[index]
        y_g = y if (y is None or index is None) else y[index]
        batch = t.shape[0]
        if self.guide_fn is None:
            if y is None:
                raise ValueError("CFG needs labels")
            null = torch.full_like(y_g, self.null_label)
            raw = self.net_fn(_cat(x, x_g), torch.cat([t, t_g]), torch.cat([y, null]))
            cond, guide = [p[:batch] for p in state_parts(raw)], [p[batch:] for p in state_parts(raw)]
        else:
            raw = self.net_fn(x, t, y)
            cond, guide = list(state_parts(raw)), list(state_parts(self.guide_fn(x_g, t_g, y_g)))
        scales = self.scales if self.scales is not None else (self.scale,) * len(cond)
        if len(scales) != len(cond) or len(guide) != len(cond):
            raise ValueError(f"{len(scales)} scales / {len(guide)} guide outputs for {len(cond)} outputs")
        out = []
        for i, (c, g, w) in enumerate(zip(cond, guide, scales)):
            if w == 1.0:
                out.append(c)  # exactly the conditional prediction
                continue
            c_g = c if index is None else c[index]
            if g.shape != c_g.shape:  # an autoguidance net of another output shape would broadcast silently
                raise ValueError(f"guide prediction {i} has shape {tuple(g.shape)} but the main network's has "
                                 f"{tuple(c_g.shape)}: the guide must predict what the main network predicts")
            mixed = g + w * (c_g - g)
            if index is None:
                out.append(mixed)
            else:
                full = c.clone()
                full[index] = mixed.to(full.dtype)
                out.append(full)
        return pack_state(out, raw)

    def with_labels(self, y: Tensor | None) -> Callable[[State, Tensor], State]:
        """The two-argument ``(x, t) -> prediction`` the samplers call, with labels y bound."""

        def denoise(x: State, t: Tensor) -> State:
            return self(x, t, y)

        return denoise
