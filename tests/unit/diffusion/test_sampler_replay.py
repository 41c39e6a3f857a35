"""SR-DiT Euler–Maruyama sampler against the official records, with the network replayed.

The reference cases (reference/srdit/sampler_sde*.json) store every model call of the official
``euler_maruyama_sampler`` (inputs and returned velocities). Replaying those velocities isolates
the sampler arithmetic — time grid, float64 state, score/drift, noise order, final step, guidance
interval and combination — from the network: our sampler must feed the recorded inputs to each
call and end at the recorded sample. (tests/reference/ checks the full model + sampler.)
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion import GuidedDenoiser, euler_maruyama_sample, flow_time_grid
from tests.conftest import load_case, reference_cases

CASES = [
    path
    for case in ("sampler_sde", "sampler_sde_cfg", "sampler_sde_pathdrop_guided")
    for path in reference_cases("srdit", case)
]
NULL_LABEL = 1000  # hard-coded by the official samplers


class ReplayNet:
    """Returns the recorded (v, cls_v) of call k after checking the recorded inputs of call k."""

    def __init__(self, tensors: dict[str, torch.Tensor], atol: float, rtol: float) -> None:
        self.tensors = tensors
        self.atol, self.rtol = atol, rtol
        self.calls = 0

    def __call__(self, x, t, y, uncond: bool = False):
        key = f"intermediate/call_{self.calls:02d}/"
        rec = {name: self.tensors[key + name] for name in ("x", "cls", "t", "y", "uncond", "v", "cls_v")}
        latent, cls = x
        assert latent.dtype == torch.float32 and t.dtype == torch.float32 and t.shape == y.shape
        torch.testing.assert_close(latent, rec["x"], atol=self.atol, rtol=self.rtol)
        torch.testing.assert_close(cls, rec["cls"], atol=self.atol, rtol=self.rtol)
        torch.testing.assert_close(t, rec["t"], atol=1e-7, rtol=0)
        assert torch.equal(y, rec["y"]) and int(rec["uncond"][0]) == int(uncond)
        self.calls += 1
        return rec["v"], rec["cls_v"]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_euler_maruyama_replays_official_sampler(path: Path) -> None:
    meta, tensors = load_case(path)
    cfg = meta["config"]["sampler"]
    atol, rtol = meta["tolerance"]["atol"], meta["tolerance"]["rtol"]
    shift = meta["derived"]["shift"]
    torch.testing.assert_close(
        flow_time_grid(cfg["num_steps"], 0.04, shift, append_zero=True),
        torch.tensor(meta["derived"]["t_steps_float64"], dtype=torch.float64),
        atol=1e-12, rtol=0,
    )
    net = ReplayNet(tensors, atol, rtol)
    path_drop = "pathdrop" in meta["case"]
    guided = GuidedDenoiser(
        net,
        scales=(cfg["cfg_scale"] if cfg["cfg_scale"] > 1 else 1.0,
                cfg["cls_cfg_scale"] if cfg["cfg_scale"] > 1 and cfg["cls_cfg_scale"] > 0 else 1.0),
        guide_fn=(lambda x, t, y: net(x, t, torch.full_like(y, NULL_LABEL), uncond=True)) if path_drop else None,
        null_label=NULL_LABEL,
        interval=(cfg["guidance_low"], cfg["guidance_high"]),
    )
    steps = list(zip(tensors["input/step_noise"], tensors["input/step_noise_cls"]))
    sample, cls = euler_maruyama_sample(
        guided.with_labels(tensors["input/y"]),
        (tensors["input/latents"], tensors["input/cls_latents"]),
        num_steps=cfg["num_steps"],
        shift=shift,
        step_noise=steps,
    )
    assert net.calls == len({k.split("/")[1] for k in tensors if k.startswith("intermediate/call_")})
    # a tenth of the case tolerance: only float32 rounding of the recorded velocities separates us
    torch.testing.assert_close(sample, tensors["output/sample"], atol=atol / 10, rtol=rtol / 10)
    torch.testing.assert_close(cls, tensors["output/cls_sample"], atol=atol / 10, rtol=rtol / 10)
