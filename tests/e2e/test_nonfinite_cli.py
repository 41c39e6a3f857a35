"""A NaN gradient of a finite loss on the command line (issue 21, item 2): the tiny SiT run skips that step, and
every weight, the optimizer state and the EMA in ``last.ckpt`` stay finite (before: one NaN gradient made them all NaN
and every later save wrote the NaN state); NaN gradients on every step stop the run after
``nonfinite.max_consecutive_skips`` with ``last.ckpt`` holding the last good state."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from speedrun_diffusion.lightning_modules.cli import build_cli
from speedrun_diffusion.lightning_modules.nonfinite import TooManyNonFiniteStepsError
from tests.helpers import ROOT

TINY = str(ROOT / "configs" / "sit" / "tiny_cpu.yaml")
FAST = ["--model.init_args.depth", "1", "--model.init_args.hidden_size", "32", "--model.init_args.num_heads", "2",
        "--model.init_args.sampling.num_steps", "2", "--data.init_args.resolution", "16",
        "--data.init_args.batch_size", "4", "--data.init_args.val_size", "8", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class NaNGradient(L.Callback):
    """Test hook: from global step ``start`` to ``stop`` (excluded), one element of the first gradient is NaN."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.start <= trainer.global_step < self.stop:
            grad = next(p.grad for p in pl_module.net.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("nan")


def _run(tmp_path: Path, start: int, stop: int, *extra: str):
    overlay = tmp_path / "nan.yaml"
    overlay.write_text(f"""
trainer:
  callbacks:
    - class_path: speedrun_diffusion.callbacks.EMA
      init_args: {{decay: 0.9, warmup: true}}
    - class_path: speedrun_diffusion.callbacks.AtomicModelCheckpoint
      init_args:
        dirpath: ${{....default_root_dir}}/checkpoints
        save_last: true
        every_n_train_steps: 2
        save_top_k: 0
    - class_path: tests.e2e.test_nonfinite_cli.NaNGradient
      init_args: {{start: {start}, stop: {stop}}}
""")
    return build_cli(["fit", "--config", TINY, "--config", str(overlay), *FAST,
                      "--trainer.default_root_dir", str(tmp_path / "run"), *extra])


def _finite(tree) -> bool:
    if torch.is_tensor(tree):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_finite(v) for v in tree)
    return True


def _check_finite(saved: dict) -> None:
    ema = next(v for k, v in saved["callbacks"].items() if k.startswith("EMA"))
    assert _finite(saved["state_dict"]) and _finite(saved["optimizer_states"]) and _finite(ema["shadow"])


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


def test_one_nan_gradient_is_skipped_and_every_saved_tensor_stays_finite(tmp_path):
    cli = _run(tmp_path, 2, 3, "--trainer.max_steps", "6")
    assert cli.trainer.global_step == 6 and cli.model.nonfinite_steps == 1
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and saved["nonfinite_steps"] == 1
    _check_finite(saved)


def test_nan_gradients_on_every_step_stop_the_run_keeping_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TooManyNonFiniteStepsError, match=r"3 training steps in a row skipped"):
        _run(tmp_path, 3, 100, "--trainer.max_steps", "40", "--model.init_args.nonfinite.max_consecutive_skips", "3")
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and saved["nonfinite_steps"] == 1  # written before the 3rd skip in a row
    _check_finite(saved)
