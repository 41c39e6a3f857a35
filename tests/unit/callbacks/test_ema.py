"""EMA callback: equals the analytic EMA of the parameter trajectory (single process and FSDP2 on
2 gloo processes), swaps in for evaluation and back, survives checkpoints, exports safetensors."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from speedrun_diffusion.callbacks.ema import EMA
from tests.helpers.toy_recipe import RecordTrajectory, ToyRecipe, analytic_ema, full_parameters, toy_loader


def _trainer(callbacks, steps, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks, **kwargs)


def _assert_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=atol, rtol=1e-5, msg=k)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_equals_analytic_average(warmup):
    recorder, ema = RecordTrajectory(), EMA(decay=0.7, warmup=warmup)
    module = ToyRecipe()
    _trainer([recorder, ema], steps=7, enable_checkpointing=False).fit(module, toy_loader())
    assert len(recorder.trajectory) == 8 and ema.num_updates == 7
    expected = analytic_ema(recorder.trajectory, 0.7, warmup)
    _assert_close(ema.full_state(module), expected)
    # the weights did move, so the EMA is a non-trivial average (not the last or first iterate)
    assert not torch.allclose(expected["head.weight"], recorder.trajectory[-1]["head.weight"].double())


def test_ema_update_every_and_start_step():
    recorder, ema = RecordTrajectory(), EMA(decay=0.5, update_every=2, start_step=2)
    module = ToyRecipe()
    _trainer([recorder, ema], steps=6, enable_checkpointing=False).fit(module, toy_loader())
    traj = recorder.trajectory
    expected = {k: v.double() for k, v in traj[2].items()}  # copies the weights up to start_step
    for step in (4, 6):
        expected = {k: 0.5 * expected[k] + 0.5 * traj[step][k].double() for k in expected}
    _assert_close(ema.full_state(module), expected)
    assert ema.num_updates == 2


def test_ema_swapped_for_validation_and_back():
    seen = {}

    class Probe(L.Callback):
        def on_validation_batch_start(self, trainer, pl_module, *args):
            seen["val"] = full_parameters(pl_module.net)

    ema = EMA(decay=0.9)
    module = ToyRecipe()
    trainer = _trainer([ema, Probe()], steps=4, enable_checkpointing=False, limit_val_batches=1,
                       val_check_interval=4, check_val_every_n_epoch=None,
                       num_sanity_val_steps=0)
    trainer.fit(module, toy_loader(), toy_loader())
    _assert_close(seen["val"], ema.full_state(module))
    current = full_parameters(module.net)
    assert not torch.allclose(current["head.weight"], seen["val"]["head.weight"])
    with ema.swapped(module):
        _assert_close(full_parameters(module.net), ema.full_state(module))
    _assert_close(full_parameters(module.net), current)


def test_ema_checkpoint_resume_matches_uninterrupted(tmp_path):
    ref_ema = EMA(decay=0.8)
    ref = ToyRecipe()
    _trainer([ref_ema], steps=6, enable_checkpointing=False).fit(ref, toy_loader())

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=3, save_top_k=0)
    first = ToyRecipe()
    _trainer([EMA(decay=0.8), ckpt], steps=3).fit(first, toy_loader())
    resumed_ema = EMA(decay=0.8)
    resumed = ToyRecipe()
    _trainer([resumed_ema], steps=6, enable_checkpointing=False).fit(resumed, toy_loader(),
                                                                      ckpt_path=str(tmp_path / "last.ckpt"))
    assert resumed_ema.num_updates == 6
    _assert_close(resumed_ema.full_state(resumed), ref_ema.full_state(ref), atol=1e-6)


def test_ema_export_safetensors(tmp_path):
    ema = EMA(decay=0.6, export_path=str(tmp_path / "ema.safetensors"))
    module = ToyRecipe()
    _trainer([ema], steps=3, enable_checkpointing=False).fit(module, toy_loader())
    exported = load_file(str(tmp_path / "ema.safetensors"))
    assert set(exported) == set(module.net.state_dict())
    _assert_close({k: exported[k] for k in ema.full_state(module)}, ema.full_state(module))
    # the export loads straight into a fresh network
    fresh = ToyRecipe().net
    fresh.load_state_dict(exported)


def test_ema_rejects_bad_arguments_and_mismatched_state():
    with pytest.raises(ValueError):
        EMA(decay=1.5)
    with pytest.raises(ValueError):
        EMA(update_every=0)
    ema = EMA()
    ema.load_state_dict({"shadow": {"nope": torch.zeros(1)}, "num_updates": 1})
    with pytest.raises(KeyError, match="missing"):
        ema.swap_in(ToyRecipe())


def test_ema_update_is_one_multi_tensor_lerp_with_the_per_tensor_result(monkeypatch):
    """One ``torch._foreach_lerp_`` over every shadow tensor per update — not a Python loop of kernels — giving the
    per-tensor θ_ema.lerp_(θ, 1 − d) bit for bit (the update's definition, warm-up decays included)."""
    module, ema = ToyRecipe(), EMA(decay=0.9, warmup=True)
    ema.on_fit_start(None, module)
    reference = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda shadows, *a: calls.append(len(shadows)) or real(shadows, *a))
    generator = torch.Generator().manual_seed(0)
    for n in range(4):
        with torch.no_grad():
            for p in module.net.parameters():
                p.add_(torch.randn(p.shape, generator=generator))
        ema.update(module)
        decay = min(0.9, (1 + n) / (10 + n))
        for name, p in module.net.named_parameters():
            reference[name].lerp_(p.detach(), 1 - decay)
    assert calls == [len(reference)] * 4
    assert all(torch.equal(ema.full_state(module)[k], v) for k, v in reference.items())
