"""RAE stage-2 networks loaded through ``import_official`` against the official DiTwDDTHead / LightningDiT
(reference/rae_stage2): eval forwards with every stored intermediate, and the official guidance helpers,
replayed and checked against our ``GuidedDenoiser`` on the conditional rows."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from speedrun_diffusion.lightning_modules.diffusion import GuidedDenoiser
from speedrun_diffusion.lightning_modules.networks.dit import DiT
from speedrun_diffusion.lightning_modules.networks.ditdh import DiTDH
from tests.reference.conftest import Executed
from tests.reference.rae_stage2_common import (  # noqa: F401
    assert_close,
    cases,
    load_rae_case,
    official_ditdh_forward_with_autoguidance,
    official_ditdh_forward_with_cfg,
    official_lightningdit_forward_with_autoguidance,
    official_lightningdit_forward_with_cfg,
    official_lightningdit_scale,
    one_thread,
)

FORWARD = cases("ditdh_forward", "ditdh_forward_variant", "lightningdit_forward", "lightningdit_forward_variant")
DITDH_CFG = cases("ditdh_forward_with_cfg")
DITDH_AG = cases("ditdh_forward_with_autoguidance")
LIGHTNING_GUIDED = cases("lightningdit_forward_with_cfg", "lightningdit_forward_with_autoguidance")


def _debug_modules(net: nn.Module) -> dict[str, nn.Module]:
    """Our module whose output is each official ``output/debug/*`` intermediate."""
    if isinstance(net, DiTDH):
        named = {"t_emb": net.t_embedder, "y_emb": net.y_embedder, "s_patch": net.s_embedder,
                 "s_cond": net.head.s_projector, "x_patch": net.head.x_embedder, "final_tokens": net.head.final_layer}
        named.update({f"enc_block_{i}": b for i, b in enumerate(net.blocks)})
        named.update({f"dec_block_{i}": b for i, b in enumerate(net.head.blocks)})
        return named
    named = {"t_emb": net.t_embedder, "y_emb": net.y_embedder, "x_patch": net.x_embedder,
             "final_tokens": net.final_layer}
    named.update({f"block_{i}": b for i, b in enumerate(net.blocks)})
    return named


def _record(net: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        # blocks return (x, raw v): keep x
        return lambda _m, _i, out: seen.__setitem__(name, out[0] if isinstance(out, tuple) else out)

    handles = [m.register_forward_hook(hook(n)) for n, m in _debug_modules(net).items()]
    return seen, handles


@pytest.mark.parametrize("path", FORWARD, ids=lambda p: p.stem)
def test_forward_and_intermediates(path: Path, executed: Executed) -> None:
    spec, data, net, _ = load_rae_case(path)
    assert isinstance(net, DiTDH if spec["source"]["object"].startswith("DiTwDDTHead") else DiT)
    seen, handles = _record(net)
    net = executed(net)  # the hooks are traced into the compiled graph
    with torch.no_grad():
        out = net(data["input/x"], data["input/t"], data["input/y"])
    for h in handles:
        h.remove()
    assert_close(out, data["output/out"], spec, "output/out")
    debug = [k for k in data if k.startswith("output/debug/")]
    assert debug, "the forward cases store intermediates"
    for key in debug:
        assert_close(seen[key.removeprefix("output/debug/")], data[key], spec, key)


@pytest.mark.parametrize("path", DITDH_CFG, ids=lambda p: p.stem)
def test_ditdh_forward_with_cfg(path: Path) -> None:
    spec, data, net, _ = load_rae_case(path)
    x, t, y = data["input/x"], data["input/t"], data["input/y"]
    kw = spec["call"]["kwargs"]
    scale, interval = kw["cfg_scale"], tuple(kw["cfg_interval"])
    with torch.no_grad():
        out = official_ditdh_forward_with_cfg(net, x, t, y, scale, interval)
        n = x.shape[0] // 2
        if "output/debug/raw_forward" in data:
            assert_close(net(torch.cat([x[:n], x[:n]]), t, y), data["output/debug/raw_forward"], spec, "output/out")
        assert_close(out, data["output/out"], spec, "output/out")
        active = GuidedDenoiser(net, scale, null_label=net.num_classes, interval=interval).active(t[:n])
        if "guidance_active_per_row" in spec["call"]:
            assert active.tolist() == spec["call"]["guidance_active_per_row"]
        # the sampler batch [cond | null] with shared t is exactly CFG with an interval on the cond rows
        if torch.equal(t[:n], t[n:]) and bool((y[n:] == net.num_classes).all()):
            guided = GuidedDenoiser(net, scale, null_label=net.num_classes, interval=interval)(x[:n], t[:n], y[:n])
            assert_close(guided, data["output/out"][:n], spec, "output/out")


@pytest.mark.parametrize("path", DITDH_AG, ids=lambda p: p.stem)
def test_ditdh_forward_with_autoguidance(path: Path) -> None:
    spec, data, net, guide = load_rae_case(path)
    x, t, y = data["input/x"], data["input/t"], data["input/y"]
    kw = spec["call"]["kwargs"]
    scale, interval = kw["cfg_scale"], tuple(kw["cfg_interval"])
    with torch.no_grad():
        for key, module in (("output/debug/model_out", net), ("output/debug/guide_out", guide)):
            if key in data:
                assert_close(module(x, t, y), data[key], spec, "output/out")
        assert_close(official_ditdh_forward_with_autoguidance(net, guide, x, t, y, scale, interval),
                     data["output/out"], spec, "output/out")
        # autoguidance through the shared GuidedDenoiser: same labels for both networks, per-row interval
        denoiser = GuidedDenoiser(net, scale, guide_fn=guide, interval=interval)
        if "guidance_active_per_row" in spec["call"]:
            assert denoiser.active(t).tolist() == spec["call"]["guidance_active_per_row"]
        assert_close(denoiser(x, t, y), data["output/out"], spec, "output/out")


@pytest.mark.parametrize("path", LIGHTNING_GUIDED, ids=lambda p: p.stem)
def test_lightningdit_guidance_helpers(path: Path) -> None:
    spec, data, net, guide = load_rae_case(path)
    x, y = data["input/x"], data["input/y"]
    n = x.shape[0] // 2
    kw = spec["call"]["kwargs"]
    scale, intervals = kw["cfg_scale"], [tuple(p) for p in kw["cfg_interval"]]
    for call in spec["call"]["calls"]:
        t, key, interval_cfg = data[call["t_key"]], call["out_key"], call["interval_cfg"]
        with torch.no_grad():
            if guide is None:
                out = official_lightningdit_forward_with_cfg(net, x, t, y, scale, intervals, interval_cfg)
            else:
                out = official_lightningdit_forward_with_autoguidance(net, guide, x, t, y, scale, intervals,
                                                                      interval_cfg)
            assert_close(out, data[key], spec, key)
            # the same numbers from GuidedDenoiser with the scale the helper picks (None = no guidance)
            w = official_lightningdit_scale(t[0], scale, intervals, interval_cfg)
            denoiser = GuidedDenoiser(net, 1.0 if w is None else w, guide_fn=guide, null_label=net.num_classes)
            assert_close(denoiser(x[:n], t[:n], y[:n]), data[key][:n], spec, key)
    with pytest.raises(TypeError, match="pairs"):
        official_lightningdit_scale(torch.tensor(0.5), scale, (0.2, 0.7))  # the official sampling scripts' tuple
