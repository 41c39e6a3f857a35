"""Helpers shared by the RAE stage-2 reference tests: build networks from a case through ``import_official``,
per-key tolerances, the official DiT^DH / LightningDiT kind of a case, and replays of the official guidance helpers
(reference/rae_stage2 README "Guidance helpers") that the library's GuidedDenoiser must equal."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.checkpoints import import_official
from tests.conftest import load_case, reference_cases, with_prefix

AREA = "rae_stage2"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the vectors were generated; tiny ops only lose time to thread hand-offs."""
    torch.set_num_threads(1)
    yield


def cases(*names: str) -> list[Path]:
    """Every JSON of the area whose ``case`` is one of ``names`` (public and hidden sets alike)."""
    return [p for name in names for p in reference_cases(AREA, name)]


def kind_of(spec: dict) -> str:
    """``rae.ditdh`` for DDT.py cases (also the transport / sampler ones), ``rae.lightningdit`` otherwise."""
    source = spec["source"]
    is_lightning = "lightningDiT" in source["file"] or source["object"].startswith("LightningDiT")
    return "rae.lightningdit" if is_lightning else "rae.ditdh"


def load_rae_case(path: Path) -> tuple[dict, dict[str, torch.Tensor], nn.Module, nn.Module | None]:
    """(spec, tensors, network, guide network or None), both in eval mode with the case's official weights."""
    spec, tensors = load_case(path)
    kind = kind_of(spec)
    net = import_official(kind, with_prefix(tensors, "param/"), spec["config"]).eval()
    guide = None
    if "guide_config" in spec:
        guide = import_official(kind, with_prefix(tensors, "guide_param/"), spec["guide_config"]).eval()
    return spec, tensors, net, guide


def tolerance(spec: dict, key: str) -> tuple[float, float]:
    """(atol, rtol) of ``key``: its per-key entry, else the case level."""
    tol = spec["tolerance"]
    entry = tol.get("per_key", {}).get(key, tol)
    return entry["atol"], entry["rtol"]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, spec: dict, key: str) -> None:
    """|mine − ref| ≤ atol + rtol·|ref| with the key's tolerance; integer tensors must match exactly."""
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{key}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    if not expected.is_floating_point():
        assert torch.equal(actual.to(expected.dtype), expected), key
        return
    atol, rtol = tolerance(spec, key)
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{key}: {m}")


# --------------------------------------------------------------------- official guidance helpers (replay)

Forward = Callable[[Tensor, Tensor, Tensor], Tensor]


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def official_ditdh_forward_with_cfg(
    net: Forward, x: Tensor, t: Tensor, y: Tensor, cfg_scale: float, cfg_interval: Sequence[float] = (0.0, 1.0)
) -> Tensor:
    """``DiTwDDTHead.forward_with_cfg``: batch [cond | uncond] of 2n rows; the network runs on [x[:n]; x[:n]]
    with the full t and y (x[n:] is ignored); row i < n is guided, uncond + s·(cond − uncond), iff
    t_min ≤ t[i] ≤ t_max; the result is repeated twice (reference/rae_stage2 README "Guidance helpers")."""
    n = x.shape[0] // 2
    raw = net(torch.cat([x[:n], x[:n]]), t, y)
    cond, uncond = raw[:n], raw[n:]
    active = (t[:n] >= cfg_interval[0]) & (t[:n] <= cfg_interval[1])
    out = torch.where(_rows(active, cond), uncond + cfg_scale * (cond - uncond), cond)
    return torch.cat([out, out])


def official_ditdh_forward_with_autoguidance(
    net: Forward,
    guide: Forward,
    x: Tensor,
    t: Tensor,
    y: Tensor,
    cfg_scale: float,
    cfg_interval: Sequence[float] = (0.0, 1.0),
) -> Tensor:
    """``DiTwDDTHead.forward_with_autoguidance``: both networks on the full batch; per row inside the closed
    interval guide + s·(main − guide), else main."""
    main, bad = net(x, t, y), guide(x, t, y)
    active = (t >= cfg_interval[0]) & (t <= cfg_interval[1])
    return torch.where(_rows(active, main), bad + cfg_scale * (main - bad), main)


def official_lightningdit_scale(
    t0: Tensor | float, cfg_scale: float, cfg_interval: Sequence[Sequence[float]], interval_cfg: float = 0.0
) -> float | None:
    """The scale of the official LightningDiT helpers at time t[0], None meaning "no guidance".

    ``cfg_interval`` is a list of (lo, hi) pairs tested half-open, lo ≤ t0 < hi; inside one, ``interval_cfg``
    is used if > 1, else no guidance; outside all of them ``cfg_scale`` — the inverse of the DiT^DH meaning.
    A flat (lo, hi) pair (what the official sampling scripts pass) raises TypeError there as here. The
    comparison runs in t0's dtype, as the official tensor-vs-float test does.
    """
    t0 = torch.as_tensor(t0)
    for pair in cfg_interval:
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"cfg_interval must be a list of (lo, hi) pairs, got {cfg_interval!r}")
        if bool(t0 >= pair[0]) and bool(t0 < pair[1]):
            return interval_cfg if interval_cfg > 1.0 else None
    return cfg_scale


def official_lightningdit_forward_with_cfg(
    net: Forward,
    x: Tensor,
    t: Tensor,
    y: Tensor,
    cfg_scale: float,
    cfg_interval: Sequence[Sequence[float]],
    interval_cfg: float = 0.0,
) -> Tensor:
    """``LightningDiT.forward_with_cfg``: network on [x[:n]; x[:n]] with the full t, y; one scale for the whole
    batch from ``official_lightningdit_scale(t[0], ...)``; result repeated twice."""
    scale = official_lightningdit_scale(t[0], cfg_scale, cfg_interval, interval_cfg)
    n = x.shape[0] // 2
    raw = net(torch.cat([x[:n], x[:n]]), t, y)
    cond, uncond = raw[:n], raw[n:]
    out = cond if scale is None else uncond + scale * (cond - uncond)
    return torch.cat([out, out])


def official_lightningdit_forward_with_autoguidance(
    net: Forward,
    guide: Forward,
    x: Tensor,
    t: Tensor,
    y: Tensor,
    cfg_scale: float,
    cfg_interval: Sequence[Sequence[float]],
    interval_cfg: float = 0.0,
) -> Tensor:
    """``LightningDiT.forward_with_autoguidance``: both networks on the first half x[:n], t[:n], y[:n] only;
    scale as in ``official_lightningdit_scale``; result repeated twice."""
    n = x.shape[0] // 2
    scale = official_lightningdit_scale(t[0], cfg_scale, cfg_interval, interval_cfg)
    main = net(x[:n], t[:n], y[:n])
    out = main
    if scale is not None:
        bad = guide(x[:n], t[:n], y[:n])
        out = bad + scale * (main - bad)
    return torch.cat([out, out])
