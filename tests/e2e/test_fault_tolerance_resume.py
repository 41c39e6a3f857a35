"""Kill-and-resume (docs/fault-tolerance.md): the SiT tiny fit, SIGKILLed mid-epoch after a checkpoint and
resumed with `--ckpt_path last`, ends with exactly the weights, EMA and optimizer state of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from tests.helpers import ROOT

TINY = str(ROOT / "configs" / "sit" / "tiny_cpu.yaml")
# 20 samples / batch 4 = 5 steps per epoch; checkpoints every 3 steps; 12 steps cross two epoch boundaries
SMALL = ["--model.init_args.depth", "1", "--model.init_args.hidden_size", "32", "--model.init_args.num_heads", "2",
         "--model.init_args.sampling.num_steps", "2", "--model.init_args.optimizer.warmup_steps", "2",
         "--data.init_args.resolution", "16", "--data.init_args.batch_size", "4", "--data.init_args.train_size", "20",
         "--data.init_args.val_size", "8", "--trainer.limit_val_batches", "1", "--trainer.val_check_interval", "4",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--trainer.deterministic", "true", "--trainer.max_steps", "12"]
KILL_AT = 8  # the last checkpoint before it is step 6: epoch 1 after its first batch, so the resume is mid-epoch


class PauseAt(L.Callback):
    """Test hook: at global step ``step`` write ``marker`` and hang until the test kills the process."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(600)


def _config(tmp: Path, name: str, pause_marker: Path | None = None) -> Path:
    """Callbacks + paths of one run: EMA and an atomic last.ckpt every 3 steps (no sample grids, no logger)."""
    pause = "" if pause_marker is None else f"""
    - class_path: tests.e2e.test_fault_tolerance_resume.PauseAt
      init_args: {{step: {KILL_AT}, marker: {pause_marker}}}"""
    path = tmp / f"{name}.yaml"
    path.write_text(f"""
trainer:
  default_root_dir: {tmp / name}
  logger: false
  callbacks:
    - class_path: speedrun_diffusion.callbacks.EMA
      init_args: {{decay: 0.9, warmup: true}}
    - class_path: speedrun_diffusion.callbacks.AtomicModelCheckpoint
      init_args: {{dirpath: {tmp / name / 'checkpoints'}, save_last: true, every_n_train_steps: 3, save_top_k: 0}}{pause}
""")
    return path


def _fit(config: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "speedrun_diffusion.lightning_modules.cli", "fit", "--config", TINY, "--config", str(config), *SMALL, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(a, b, where: str) -> None:
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_sigkill_mid_epoch_then_resume_from_last_matches_uninterrupted_run(tmp_path):
    marker = tmp_path / "paused"
    reference = _fit(_config(tmp_path, "reference"))
    killed = _fit(_config(tmp_path, "killed", pause_marker=marker))
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached the kill step"
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL

    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    saved = _load(last)
    assert saved["global_step"] == 6
    # the loader position travels in the checkpoint: 6 steps = one epoch of 5 batches + 1 batch of epoch 1
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0] | {} == {
        "epoch": 1, "samples": 4, "batch_size": 4, "num_replicas": 1, "dataset_size": 20, "seed": 0}
    assert not list(last.parent.glob(".*.tmp"))

    resumed = _fit(_config(tmp_path, "killed"), "--ckpt_path", "last")
    _finish(resumed)
    _finish(reference)
    ours, theirs = _load(last), _load(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert ours["global_step"] == theirs["global_step"] == 12
    _assert_same_tensors(ours["state_dict"], theirs["state_dict"], "state_dict")
    _assert_same_tensors(ours["optimizer_states"], theirs["optimizer_states"], "optimizer")
    ema_key = next(k for k in ours["callbacks"] if k.startswith("EMA"))
    _assert_same_tensors(ours["callbacks"][ema_key], theirs["callbacks"][ema_key], "ema")
    _assert_same_tensors(ours["loops"]["fit_loop"]["state_dict"], theirs["loops"]["fit_loop"]["state_dict"], "loader")
