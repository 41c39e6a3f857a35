"""GuidedDenoiser: CFG, autoguidance, guidance intervals (t and log-SNR), tuple outputs."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.diffusion import (
    GuidedDenoiser,
    LogSNRSchedule,
    euler_maruyama_sample,
    euler_ode_sample,
)
from tests.helpers.gaussian_toy import SIGMA, flow_posterior, linear_law, max_errors

NULL = 3
torch.manual_seed(0)
W = torch.randn(2, 2, dtype=torch.float64)
EMB = torch.randn(NULL + 1, 2, dtype=torch.float64)
DRIFT = torch.randn(2, dtype=torch.float64)


class LinearNet:
    """Toy denoiser f(x, t, y) = x·W + E[y] + t·c that records every call."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, t, y):
        self.calls.append((x, t, y))
        return x @ W + EMB[y] + t[:, None] * DRIFT + self.offset


def never(*_args):
    raise AssertionError("the guide must not be evaluated")


def inputs(batch: int = 5):
    x = torch.randn(batch, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)[:batch]  # exact bounds below
    y = torch.tensor([0, 1, 2, 0, 1])[:batch]
    return x, t, y


def test_scale_one_skips_guide_and_returns_cond() -> None:
    x, t, y = inputs()
    net = LinearNet()
    assert torch.equal(GuidedDenoiser(net, 1.0, null_label=NULL)(x, t, y), LinearNet()(x, t, y))
    assert len(net.calls) == 1 and net.calls[0][0].shape[0] == 5  # no doubled batch
    out = GuidedDenoiser(net, 1.0, guide_fn=never)(x, t, y)
    assert torch.equal(out, LinearNet()(x, t, y))
    # the same with per-output scales all equal to 1
    GuidedDenoiser(net, 4.0, guide_fn=never, scales=(1.0,))(x, t, y)


def test_cfg_is_one_doubled_call_and_matches_formula() -> None:
    x, t, y = inputs()
    net = LinearNet()
    out = GuidedDenoiser(net, 3.0, null_label=NULL)(x, t, y)
    assert len(net.calls) == 1
    xx, tt, yy = net.calls[0]
    assert torch.equal(xx, torch.cat([x, x])) and torch.equal(tt, torch.cat([t, t]))
    assert torch.equal(yy, torch.cat([y, torch.full_like(y, NULL)]))
    cond = x @ W + EMB[y] + t[:, None] * DRIFT
    uncond = x @ W + EMB[NULL] + t[:, None] * DRIFT
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond))


def test_interval_on_t_is_closed_and_per_sample() -> None:
    x, t, y = inputs()  # t = 0.1, 0.3, 0.5, 0.7, 0.9
    net = LinearNet()
    guided = GuidedDenoiser(net, 2.0, null_label=NULL, interval=(0.3, 0.7))
    assert guided.active(t).tolist() == [False, True, True, True, False]
    out = guided(x, t, y)
    assert net.calls[0][0].shape[0] == 5 + 3  # only the guided rows are doubled
    cond = LinearNet()(x, t, y)
    uncond = LinearNet()(x, t, torch.full_like(y, NULL))
    assert torch.equal(out[[0, 4]], cond[[0, 4]])
    torch.testing.assert_close(out[1:4], (uncond + 2.0 * (cond - uncond))[1:4])


def test_no_sample_in_interval_skips_guide() -> None:
    x, t, y = inputs()
    net = LinearNet()
    out = GuidedDenoiser(net, 2.0, null_label=NULL, interval=(0.95, 1.0))(x, t, y)
    assert len(net.calls) == 1 and torch.equal(net.calls[0][2], y)
    assert torch.equal(out, LinearNet()(x, t, y))
    out = GuidedDenoiser(LinearNet(), 2.0, guide_fn=never, interval=(0.0, 0.05))(x, t, y)
    assert torch.equal(out, LinearNet()(x, t, y))


def test_interval_on_logsnr() -> None:
    # SiD2 256²: guidance where λ(t) ∈ [−1.5, 5] under the sampling schedule
    schedule = LogSNRSchedule("interpolated_cosine", image_size=256)
    t = torch.linspace(0.0, 1.0, 41, dtype=torch.float64)
    guided = GuidedDenoiser(
        LinearNet(), 2.0, null_label=NULL, interval=(-1.5, 5.0), interval_on="logsnr", schedule=schedule
    )
    lam = schedule(t)
    active = guided.active(t)
    assert torch.equal(active, (lam >= -1.5) & (lam <= 5.0))
    assert 0 < int(active.sum()) < t.numel()
    lo, hi = schedule.inverse(torch.tensor([5.0, -1.5], dtype=torch.float64)).tolist()
    inside = (t > lo + 1e-9) & (t < hi - 1e-9)
    assert bool(active[inside].all()) and not bool(active[(t < lo - 1e-9) | (t > hi + 1e-9)].any())
    x, y = torch.randn(41, 2, dtype=torch.float64), torch.randint(0, NULL, (41,))
    out = guided(x, t, y)
    cond = LinearNet()(x, t, y)
    assert torch.equal(out[~active], cond[~active]) and not torch.allclose(out[active], cond[active])
    with pytest.raises(ValueError):
        GuidedDenoiser(LinearNet(), 2.0, null_label=NULL, interval=(-1.5, 5.0), interval_on="logsnr")


def test_autoguidance_uses_same_labels() -> None:
    x, t, y = inputs()
    net, weak = LinearNet(), LinearNet(offset=0.7)
    out = GuidedDenoiser(net, 1.8, guide_fn=weak, interval=(0.3, 1.0))(x, t, y)
    assert len(net.calls) == 1 and len(weak.calls) == 1
    assert torch.equal(weak.calls[0][2], y[1:]) and torch.equal(weak.calls[0][0], x[1:])
    cond = LinearNet()(x, t, y)
    guide = cond + 0.7
    assert torch.equal(out[0], cond[0])
    torch.testing.assert_close(out[1:], (guide + 1.8 * (cond - guide))[1:])


def test_tuple_state_and_per_output_scales() -> None:
    # SR-DiT style: state (latent, cls), outputs (v, cls_v), cfg on the latent only
    latent, cls = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t, y = torch.rand(3, dtype=torch.float64), torch.tensor([0, 1, 2])
    calls = []

    def net(state, t, y):
        calls.append(state)
        a, b = state
        return a @ W + EMB[y], 2.0 * b + y[:, None]

    cond_v, cond_c = net((latent, cls), t, y)
    unc_v, _ = net((latent, cls), t, torch.full_like(y, NULL))
    calls.clear()
    out = GuidedDenoiser(net, null_label=NULL, scales=(4.0, 1.0))((latent, cls), t, y)
    assert isinstance(out, tuple) and len(calls) == 1
    assert calls[0][0].shape[0] == 6 and calls[0][1].shape[0] == 6  # every element doubled
    torch.testing.assert_close(out[0], unc_v + 4.0 * (cond_v - unc_v))
    assert torch.equal(out[1], cond_c)
    with pytest.raises(ValueError):
        GuidedDenoiser(net, null_label=NULL, scales=(4.0,))((latent, cls), t, y)


def test_cfg_needs_null_label_and_with_labels_binds() -> None:
    with pytest.raises(ValueError):
        GuidedDenoiser(LinearNet(), 2.0)
    x, t, y = inputs()
    guided = GuidedDenoiser(LinearNet(), 2.0, null_label=NULL)
    assert torch.equal(guided.with_labels(y)(x, t), guided(x, t, y))


# ---------------------------------------------------------------- closed form on Gaussian classes

MEANS = torch.tensor([[0.5, -0.3, 0.2], [-0.4, 0.6, 0.1], [0.0, 0.2, -0.5], [0.1, 0.1, 0.0]], dtype=torch.float64)


def class_velocity(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, shift_mean: float = 0.0) -> torch.Tensor:
    """Exact velocity for data N(MEANS[y] + shift_mean, SIGMA), per row (label NULL = 'unconditional')."""
    assert torch.all(t == t[0])
    x0, eps = flow_posterior(x, float(t[0]), mu=MEANS[y] + shift_mean)
    return (eps - x0).to(x.dtype)


@pytest.mark.parametrize("sampler", ["ode", "sde"])
@pytest.mark.parametrize("mode", ["cfg", "autoguidance"])
def test_guided_gaussian_classes_closed_form(sampler: str, mode: str) -> None:
    # cond N(μ_c, Σ) and guide N(μ_g, Σ) share the covariance at every t, so guide + w(cond − guide)
    # on the velocity (affine in the score) is the exact velocity of N(w·μ_c + (1 − w)·μ_g, Σ)
    w, label = 2.5, 1
    if mode == "cfg":
        guided, mu_guide = GuidedDenoiser(class_velocity, w, null_label=NULL), MEANS[NULL]
    else:
        bad = lambda x, t, y: class_velocity(x, t, y, shift_mean=0.3)  # noqa: E731
        guided, mu_guide = GuidedDenoiser(class_velocity, w, guide_fn=bad), MEANS[label] + 0.3
    target = (w * MEANS[label] + (1 - w) * mu_guide, SIGMA)

    def run(noise, step_noise):
        fn = guided.with_labels(torch.full((noise.shape[0],), label))
        if sampler == "ode":
            return euler_ode_sample(fn, noise, 200, shift=2.0)
        return euler_maruyama_sample(fn, noise, 200, shift=2.0, t_last=0.001, step_noise=step_noise)

    errors = max_errors(*linear_law(run, 0 if sampler == "ode" else 199), *target)
    assert errors[0] < 1e-6 and errors[1] < 0.02, errors
