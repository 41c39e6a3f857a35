"""The ``compile`` argument group: torch.compile in ``configure_model`` for every recipe.

* no graph break in any recipe's training hot path: every module the group compiles, run as ``compute_losses`` (and
  the GAN recipes' discriminator step) calls it on a tiny model, traces into whole graphs (counted by
  ``torch._dynamo``'s counters, with the tracing-only "eager" backend so the test takes seconds);
* compiled = eager: a tiny SR-DiT's training step (losses, gradients) and its sampler under inductor, within the
  stated tolerances; compiling keeps parameter names and the state dict;
* the group is off by default, coerced like the others and stored in the checkpoint's hyper-parameters.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from speedrun_diffusion.lightning_modules.compilation import CompileConfig, is_compiled
from speedrun_diffusion.lightning_modules.sid2 import SiD2
from speedrun_diffusion.lightning_modules.sit import SiT

TRACE_ONLY = {"enabled": True, "backend": "eager"}  # dynamo's graph capture without code generation


def sit(**kw):
    torch.manual_seed(0)
    module = SiT(model="SiT-S/4", input_size=8, in_channels=3, num_classes=4, depth=2, hidden_size=32, num_heads=2,
                 **kw)
    return module, {"image": torch.randn(4, 3, 8, 8), "label": torch.tensor([0, 1, 2, 3])}


def sid2(**kw):
    from tests.unit.recipes.test_sid2 import TINY, _batch

    torch.manual_seed(0)
    return SiD2(**TINY, **kw), _batch(4)


def srdit(**kw):
    from tests.unit.recipes.test_srdit import _batch, _module

    torch.manual_seed(0)
    return _module(**kw), _batch()


def rae_stage1(**kw):
    from tests.unit.recipes.test_rae import images, tiny_stage1

    return tiny_stage1(**kw), images(4)


def rae_stage2(**kw):
    from tests.unit.recipes.test_rae import tiny_stage2

    torch.manual_seed(0)
    return tiny_stage2(**kw), {"latent": torch.randn(4, 16, 4, 4), "label": torch.tensor([0, 1, 2, 3])}


def speeddiff(**kw):
    from tests.unit.recipes.test_speeddiff import images, tiny

    return tiny(**kw), images(4)


RECIPES = {"SiT": sit, "SiD2": sid2, "SRDiT": srdit, "RAEStage1": rae_stage1, "RAEStage2": rae_stage2,
           "SpeedDiff": speeddiff}


def training_step(module, batch) -> dict[str, torch.Tensor]:
    """The hot path of a training step without a trainer: the generator side's losses and backward, then (GAN
    recipes) the discriminator's."""
    losses = module.compute_losses(batch)
    losses["loss"].backward()
    if getattr(module, "discriminator", None) is not None:
        d_losses = module.discriminator_losses(batch)
        if d_losses is not None:
            d_losses["d_loss"].backward()
    return losses


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_training_hot_path_of_every_recipe_compiles_without_a_graph_break(name: str):
    module, batch = RECIPES[name](compile=TRACE_ONLY)
    names = list(module.state_dict())
    module.configure_model()
    compiled = module.compiled_modules()
    assert compiled and all(is_compiled(m) for m in compiled)
    assert list(module.state_dict()) == names  # in place: no _orig_mod. in the names, checkpoints unchanged
    module.train()
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for _ in range(2):
        losses = training_step(module, batch)
        module.zero_grad(set_to_none=True)
        graphs.append(counters["stats"]["unique_graphs"])
    assert all(torch.isfinite(v).all() for v in losses.values())
    breaks = dict(counters["graph_break"])
    assert not breaks, f"{name}: graph breaks in the training hot path: {breaks}"
    # the second step reuses the first step's graphs (no retrace)
    assert graphs[0] >= 1 and graphs[1] == graphs[0], f"{name}: graphs traced per step {graphs}"


def test_configure_model_compiles_once_and_the_group_is_off_by_default():
    module, _ = sit()
    assert module.compile_config == CompileConfig() and not module.compile_config.enabled
    module.configure_model()
    assert not is_compiled(module.net)  # off: eager
    module, _ = sit(compile={"enabled": True, "mode": "max-autotune-no-cudagraphs"})
    assert module.compile_config == CompileConfig(enabled=True, mode="max-autotune-no-cudagraphs")
    assert module.hparams["compile"]["enabled"] is True  # stored whole, as plain containers
    module.configure_model()
    call = module.net._compiled_call_impl
    module.configure_model()  # validate after fit calls it again: the same compiled call
    assert module.net._compiled_call_impl is call
    with pytest.raises(ValueError, match="compile.mode"):
        CompileConfig(mode="fastest")


# the compiled SR-DiT against eager: inductor reorders and fuses float32 arithmetic (1e-5 relative measured on the
# losses, 1e-4 on gradients and after 3 sampler steps)
LOSS_TOL, GRAD_TOL, SAMPLE_TOL = dict(atol=1e-5, rtol=1e-4), dict(atol=1e-5, rtol=1e-3), dict(atol=1e-4, rtol=1e-3)


def test_compiled_srdit_trains_and_samples_like_eager():
    eager, batch = srdit()
    compiled = copy.deepcopy(eager)
    compiled.compile_config = CompileConfig(enabled=True)
    compiled.configure_model()
    runs = []
    for module in (eager, compiled):
        module.train()
        torch.manual_seed(7)  # the same routing, label dropout, t and noise draws
        losses = training_step(module, batch)
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        images = module.sample(torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0))
        runs.append((losses, grads, images))
    (losses_e, grads_e, images_e), (losses_c, grads_c, images_c) = runs
    for key in losses_e:
        torch.testing.assert_close(losses_c[key], losses_e[key], **LOSS_TOL, msg=lambda m, k=key: f"{k}: {m}")
    assert grads_c.keys() == grads_e.keys()
    for key in grads_e:
        torch.testing.assert_close(grads_c[key], grads_e[key], **GRAD_TOL, msg=lambda m, k=key: f"{k}: {m}")
    torch.testing.assert_close(images_c, images_e, **SAMPLE_TOL)


def test_the_command_line_reaches_the_compile_group_and_the_optimizer_kernel(monkeypatch):
    import sys

    from speedrun_diffusion.lightning_modules.cli import build_cli
    from tests.helpers import CONFIGS

    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])
    cli = build_cli(["-c", str(CONFIGS / "sit" / "tiny_cpu.yaml"), "--model.init_args.compile.enabled", "true",
                     "--model.init_args.compile.mode", "max-autotune-no-cudagraphs",
                     "--model.init_args.optimizer.implementation", "for-loop"], run=False)
    assert cli.model.compile_config == CompileConfig(enabled=True, mode="max-autotune-no-cudagraphs")
    assert cli.model.optimizer_config.implementation == "for-loop"
    assert cli.model.configure_optimizers()["optimizer"].defaults["foreach"] is False
