"""RAE stage-2 process against the official transport (reference/rae_stage2): the training loss with replayed
noise / time / label-dropout draws, the time sampler (logit-normal and uniform, shifted), and the Euler ODE
(unguided, CFG with interval, autoguidance) and Euler–Maruyama samplers in their official-replay mode."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion import GuidedDenoiser, TimeSampler, shift_time
from speedrun_diffusion.lightning_modules.diffusion.rae_flow import RAETransport, rae_sample, rae_shift, rae_time_grid
from speedrun_diffusion.lightning_modules.losses.rae_transport import rae_transport_loss
from tests.reference.conftest import Executed
from tests.reference.rae_stage2_common import assert_close, cases, load_rae_case, one_thread  # noqa: F401

LOSS = cases("transport_loss", "transport_loss_uniform")
ODE = cases("sampler_ode_cfg", "sampler_ode", "sampler_ode_autoguidance")  # CFG first: the compiled case
SDE = cases("sampler_sde")


def _shift(spec: dict) -> float:
    """α of the case, checked against sqrt(time_dist_shift_dim / 4096) (RAE Sec. 4.2)."""
    info = spec["call"]["time_dist_shift"]
    shift = rae_shift(info["time_dist_shift_dim"], info.get("time_dist_shift_base", 4096))
    assert math.isclose(shift, info["value"], rel_tol=1e-12)
    return shift


def _time_dist(spec: dict) -> tuple[str, float, float]:
    """(kind, mean, std) from the official ``time_dist_type`` ('uniform' or 'logit-normal_<mu>_<sigma>')."""
    name = re.search(r"time_dist_type='([^']+)'", spec["call"]["transport"]).group(1)
    if name == "uniform":
        return "uniform", 0.0, 1.0
    _, mu, sigma = name.split("_")
    return "logit_normal", float(mu), float(sigma)


@pytest.mark.parametrize("path", LOSS, ids=lambda p: p.stem)
def test_transport_loss(path: Path, executed: Executed) -> None:
    spec, data, net, _ = load_rae_case(path)
    net = executed(net.train())  # label dropout active: replayed from the recorded decisions
    kind, mean, std = _time_dist(spec)
    transport = RAETransport(latent_shape=tuple(data["input/x1"].shape[1:]), time_dist=kind, time_mean=mean,
                             time_std=std, shift=_shift(spec))
    sampler = transport.time_sampler()
    t, t_raw = data["input/t"], data["input/t_raw"]
    if "input/u" in data:  # inverse-CDF replay of the recorded uniforms, before and after the shift
        assert_close(sampler.from_uniform(data["input/u"]), t, spec, "input/t")
        unshifted = TimeSampler(kind, mean, std, shift=1.0, t_max=transport.t_max)
        assert_close(unshifted.from_uniform(data["input/u"]), t_raw, spec, "input/t_raw")
    else:  # uniform: t_raw = 0.999·U
        assert bool((t_raw >= 0).all() and (t_raw < transport.t_max).all())
    assert_close(shift_time(t_raw, transport.time_shift), t, spec, "input/t")
    drop = data["input/drop_mask"].bool()
    y = data["input/y"]
    assert torch.equal(torch.where(drop, torch.full_like(y, net.num_classes), y), data["input/y_effective"])
    with torch.no_grad():
        out = rae_transport_loss(net, data["input/x1"], y, sampler, noise=data["input/noise"], t=t, force_drop=drop)
    for key, value in (("output/xt", out.x_t), ("output/target", out.target), ("output/pred", out.prediction),
                       ("output/loss", out.loss), ("output/loss_mean", out.loss.mean())):
        assert_close(value, data[key], spec, key)


def _recording(fn):
    """velocity_fn wrapper that keeps every state it is called on (the trajectory without the final state)."""
    states: list[torch.Tensor] = []

    def velocity(x, t):
        states.append(x.clone())
        return fn(x, t)

    return velocity, states


@pytest.mark.parametrize("path", ODE, ids=lambda p: p.stem)
def test_ode_sampler(path: Path, executed: Executed) -> None:
    spec, data, net, guide = load_rae_case(path)
    net, guide = executed(net), executed(guide)
    params = spec["call"]["sampler_params"]
    assert params["sampling_method"] == "euler"
    shift, steps = _shift(spec), params["num_steps"]
    grid = rae_time_grid(steps, shift, "ode", official=True)
    assert_close(grid, data["output/time_grid"], spec, "output/time_grid")
    z, y = data["input/z"], data["input/y"]
    n = z.shape[0]
    kw = spec["call"]["model_kwargs"]
    if "cfg_scale" in kw:  # the scripts' batch [z | z], [y | null]: only the conditional half is kept
        assert torch.equal(data["input/z_batched"], torch.cat([z, z]))
        assert torch.equal(data["input/y_batched"], torch.cat([y, torch.full_like(y, net.num_classes)]))
        denoiser = GuidedDenoiser(net, kw["cfg_scale"], guide_fn=guide, null_label=net.num_classes,
                                  interval=tuple(kw["cfg_interval"]))
        active = denoiser.active(data["output/time_grid"][:-1])
        assert torch.equal(active.long(), data["output/guidance_active"])
    else:
        denoiser = GuidedDenoiser(net)
    velocity, states = _recording(denoiser.with_labels(y))
    final = rae_sample(velocity, z, shift, steps, "ode", official=True)
    trajectory = torch.stack([*states, final])
    assert_close(trajectory, data["output/trajectory"][:, :n], spec, "output/trajectory")
    assert_close(final, data["output/final"][:n], spec, "output/trajectory")
    if "output/samples" in data:
        assert_close(final, data["output/samples"], spec, "output/trajectory")


@pytest.mark.parametrize("path", SDE, ids=lambda p: p.stem)
def test_sde_sampler(path: Path, executed: Executed) -> None:
    spec, data, net, _ = load_rae_case(path)
    params = spec["call"]["sampler_params"]
    if (params["sampling_method"], params["diffusion_form"], params["diffusion_norm"], params["last_step"]) != (
            "euler", "sigma", 1.0, "Mean"):
        pytest.skip(f"sampler settings {params} are outside what this replay supports")
    shift, steps, last = _shift(spec), params["num_steps"], params["last_step_size"]
    grid = rae_time_grid(steps, shift, "sde", official=True, last_step_size=last)
    assert_close(grid[:-1], data["output/time_grid"], spec, "output/time_grid")
    z, y = data["input/z"], data["input/y"]
    net = executed(net)
    velocity, states = _recording(lambda x, t: net(x, t, y))
    final = rae_sample(velocity, z, shift, steps, "sde", official=True, last_step_size=last,
                       step_noise=data["input/step_noise"])
    # the official trajectory holds the state after each step (not the initial noise)
    trajectory = torch.stack([*states[1:], final])
    assert_close(trajectory, data["output/trajectory"], spec, "output/trajectory")
    assert_close(final, data["output/final"], spec, "output/trajectory")
