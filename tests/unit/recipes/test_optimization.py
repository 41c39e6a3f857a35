"""AdamW's kernel (``optimizer.implementation``): "auto" picks torch's fused kernel where it exists for the
parameters, every kernel computes the same update up to float rounding, the GAN recipes' second optimizer follows
the group too, and optimizer state moves between kernels (a checkpoint written with another one resumes)."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from speedrun_diffusion.lightning_modules import SiT
from speedrun_diffusion.lightning_modules.optimization import OptimizerConfig, adamw, adamw_implementation

# ours must equal torch's for-loop AdamW (the reference update, and torch's CPU default) within this, after 5 steps
# at lr 1e-3 with weight decay: the fused kernel evaluates the same formula in another order (1.6e-7 measured)
ATOL, RTOL = 1e-6, 1e-5


def tiny_sit(implementation: str = "auto") -> SiT:
    torch.manual_seed(0)
    return SiT(model="SiT-S/4", input_size=8, in_channels=3, num_classes=4, depth=2, hidden_size=32, num_heads=2,
               optimizer={"lr": 1e-3, "weight_decay": 0.05, "implementation": implementation})


def train(module: SiT, optimizer: torch.optim.Optimizer, steps: range) -> None:
    batch = {"image": torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)),
             "label": torch.tensor([0, 1, 2, 3])}
    for step in steps:
        module.compute_losses(batch, generator=torch.Generator().manual_seed(step))["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_auto_resolves_to_the_fused_kernel_on_cpu_and_the_loop_where_torch_has_none():
    cpu = [torch.nn.Parameter(torch.zeros(3))]
    assert adamw_implementation(cpu, "auto") == "fused"
    assert adamw_implementation([torch.nn.Parameter(torch.zeros(3, device="meta"))], "auto") == "for-loop"
    assert adamw_implementation(cpu, "foreach") == "foreach"  # an explicit choice is kept
    with pytest.raises(ValueError, match="implementation"):
        adamw_implementation(cpu, "fastest")
    with pytest.raises(ValueError, match="optimizer.implementation"):
        OptimizerConfig(implementation="fastest")


@pytest.mark.parametrize("implementation, flags", [("auto", (True, None)), ("fused", (True, None)),
                                                   ("foreach", (None, True)), ("for-loop", (None, False))])
def test_the_recipe_builds_the_configured_kernel(implementation: str, flags: tuple):
    optimizer = tiny_sit(implementation).configure_optimizers()["optimizer"]
    assert (optimizer.defaults["fused"], optimizer.defaults["foreach"]) == flags


@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_every_kernel_trains_like_the_for_loop(implementation: str):
    reference = tiny_sit("for-loop")
    train(reference, reference.configure_optimizers()["optimizer"], range(5))
    module = tiny_sit(implementation)
    train(module, module.configure_optimizers()["optimizer"], range(5))
    for (name, p), q in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")


def test_a_for_loop_state_resumes_under_the_fused_kernel():
    """3 steps with the loop, its state_dict loaded into a fused AdamW, 2 more = 5 steps of the loop."""
    reference = tiny_sit("for-loop")
    train(reference, reference.configure_optimizers()["optimizer"], range(5))
    module = tiny_sit("for-loop")
    loop = module.configure_optimizers()["optimizer"]
    train(module, loop, range(3))
    fused = adamw(module.trainable_parameters(), OptimizerConfig(lr=1e-3, weight_decay=0.05, implementation="fused"))
    fused.load_state_dict(loop.state_dict())
    train(module, fused, range(3, 5))
    for p, q in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=ATOL, rtol=RTOL)


def test_the_gan_recipes_discriminator_optimizer_follows_the_group():
    from tests.unit.recipes.test_speeddiff import tiny

    for implementation, fused in (("auto", True), ("for-loop", None)):
        optimizers, _ = tiny(optimizer={"implementation": implementation}).configure_optimizers()
        assert len(optimizers) == 2 and all(opt.defaults["fused"] is fused for opt in optimizers)


class GradNorms(L.Callback):
    """The total gradient norm each optimizer stepped with (read after the step: Lightning runs backward and the
    clipping inside ``optimizer.step(closure)``)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(lambda opt, *_: self.norms.append(float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for g in opt.param_groups for p in g["params"]
                             if p.grad is not None])))))


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_lightning_clips_the_fused_kernel_under_mixed_precision(precision: str):
    """Lightning's AMP plugin refuses to clip for optimizers that unscale in their step (fused AdamW) even without a
    GradScaler; the recipe clips them as the base plugin does (trainer.gradient_clip_val, and the GAN recipes'
    optimizer.grad_clip on both optimizers)."""
    from torch.utils.data import DataLoader

    from tests.unit.recipes.test_speeddiff import images, tiny

    trainer_args = dict(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, precision=precision,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    batch = {"image": torch.randn(4, 3, 8, 8), "label": torch.tensor([0, 1, 2, 3])}
    norms = GradNorms()
    L.Trainer(**trainer_args, gradient_clip_val=1e-3, callbacks=[norms]).fit(
        tiny_sit(), train_dataloaders=DataLoader([batch] * 2, batch_size=None))
    assert len(norms.norms) == 2 and all(n <= 1e-3 * (1 + 1e-3) for n in norms.norms)
    norms = GradNorms()
    L.Trainer(**trainer_args, callbacks=[norms]).fit(
        tiny(optimizer={"lr": 2e-3, "grad_clip": 1e-3}), train_dataloaders=DataLoader([images(4)] * 2, batch_size=None))
    assert len(norms.norms) == 4 and all(n <= 1e-3 * (1 + 1e-3) for n in norms.norms)  # generator + discriminator


class ClipProbe(L.Callback):
    """The gradients as backward left them (before the recipe's checks) and as the optimizer receives them."""

    def __init__(self) -> None:
        self.raw, self.clipped = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.raw.append([p.grad.clone() for p in pl_module.parameters() if p.grad is not None])

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(lambda opt, *_: self.clipped.append(  # AdamW leaves .grad
            [p.grad.clone() for p in pl_module.parameters() if p.grad is not None]))


@pytest.mark.parametrize("max_norm", [1e-3, 1e6], ids=["clipped", "below-max-norm"])
def test_clipping_reuses_the_norm_of_the_nonfinite_check_and_equals_clip_grad_norm(monkeypatch, max_norm: float):
    """One pass over the gradients per step: clipping takes the global norm the non-finite check computed, and the
    clipped gradients equal torch.nn.utils.clip_grad_norm_'s bit for bit; below max_norm no pass at all."""
    from torch.utils.data import DataLoader

    def second_pass(*args, **kwargs):
        raise AssertionError("clip_grad_norm_ recomputed the gradient norm")

    def multiply_by_one(*args, **kwargs):
        raise AssertionError("the gradients were multiplied by a clip coefficient of 1")

    batch = {"image": torch.randn(4, 3, 8, 8), "label": torch.tensor([0, 1, 2, 3])}
    probe = ClipProbe()
    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.utils, "clip_grad_norm_", second_pass)
        if max_norm > 1:
            patch.setattr(torch.nn.utils, "clip_grads_with_norm_", multiply_by_one)
        L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False, gradient_clip_val=max_norm, callbacks=[probe]).fit(
            tiny_sit(), train_dataloaders=DataLoader([batch] * 2, batch_size=None))
    assert len(probe.raw) == len(probe.clipped) == 2
    for raw, clipped in zip(probe.raw, probe.clipped):
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in raw]
        for p, g in zip(params, raw):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        assert all(torch.equal(p.grad, c) for p, c in zip(params, clipped))
        assert (max_norm > 1) == all(torch.equal(g, c) for g, c in zip(raw, clipped))
