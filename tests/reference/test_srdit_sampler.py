"""SR-DiT sampling end to end: our network from ``import_official`` + ``euler_maruyama_sample`` +
``GuidedDenoiser`` against the official SDE sampler without guidance, with CFG and with path-drop
guidance (reference/srdit/sampler_sde*.json), fed the recorded initial and step noises."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion import GuidedDenoiser, dimension_shift, euler_maruyama_sample
from tests.conftest import reference_cases
from tests.reference.conftest import Executed
from tests.reference.srdit_common import assert_matches, load_srdit_case

CASES = [p for case in ("sampler_sde_cfg", "sampler_sde", "sampler_sde_pathdrop_guided")  # CFG first: compiled
         for p in reference_cases("srdit", case)]


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_sampler_end_to_end(path: Path, executed: Executed) -> None:
    spec, data, net = load_srdit_case(path)
    net = executed(net.eval())
    sit, cfg = spec["config"]["sit"], spec["config"]["sampler"]
    null = spec["derived"]["null_label"]  # 1000: hard-coded by the official samplers
    latent_dim = sit["in_channels"] * sit["input_size"] ** 2
    shift = dimension_shift(latent_dim, cfg["shift_base"]) if cfg["time_shifting"] else 1.0
    assert shift == pytest.approx(spec["derived"]["shift"], rel=1e-12)
    guided = cfg["cfg_scale"] > 1.0
    # official: cls drift guided with cls_cfg_scale unless it is <= 0 (then conditional = scale 1)
    scales = (cfg["cfg_scale"], cfg["cls_cfg_scale"] if cfg["cls_cfg_scale"] > 0 else 1.0) if guided else (1.0, 1.0)
    path_drop = spec["case"] == "sampler_sde_pathdrop_guided"
    calls = []

    def net_fn(state, t, y, **kw):
        calls.append(t.shape[0])
        return net.velocity(state, t, y, **kw)

    denoiser = GuidedDenoiser(
        net_fn,
        scales=scales,
        guide_fn=(lambda x, t, y: net_fn(x, t, torch.full_like(y, null), uncond=True)) if path_drop else None,
        null_label=null,
        interval=(cfg["guidance_low"], cfg["guidance_high"]),
    )
    sample, cls = euler_maruyama_sample(
        denoiser.with_labels(data["input/y"]),
        (data["input/latents"], data["input/cls_latents"]),
        num_steps=cfg["num_steps"],
        shift=shift,
        step_noise=list(zip(data["input/step_noise"], data["input/step_noise_cls"])),
    )
    assert len(calls) == spec["derived"]["model_calls"]
    assert_matches(sample, data["output/sample"], spec, "sample")
    assert_matches(cls, data["output/cls_sample"], spec, "cls_sample")
