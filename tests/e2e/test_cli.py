"""The `speedrun-diffusion` LightningCLI: the tiny config parses (omegaconf interpolation), prints,
trains, resumes with `--ckpt_path last`, validates, and rejects mistyped keys by name."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speedrun_diffusion.lightning_modules.cli import build_cli
from tests.helpers import ROOT

TINY = str(ROOT / "configs" / "sit" / "tiny_cpu.yaml")
# shrink the tiny config further so the CLI round trip takes seconds
FAST = ["--model.init_args.depth", "1", "--model.init_args.hidden_size", "32", "--model.init_args.num_heads", "2",
        "--model.init_args.sampling.num_steps", "2", "--data.init_args.resolution", "16",
        "--data.init_args.batch_size", "4", "--data.init_args.val_size", "8", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false"]


def test_print_config_resolves_interpolation():
    proc = subprocess.run([sys.executable, "-m", "speedrun_diffusion.lightning_modules.cli", "fit", "--config", TINY,
                           "--data.init_args.resolution", "24", "--print_config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class_path: speedrun_diffusion.lightning_modules.SiT" in proc.stdout
    assert "input_size: 24" in proc.stdout  # ${data.init_args.resolution} followed the override


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    # LightningCLI(args=...) warns when pytest's own argv is also present
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


EVAL_YAML = """
trainer:
  callbacks+:
    - class_path: speedrun_diffusion.callbacks.Evaluation
      init_args:
        metrics: [fid, is]
        num_samples: 8
        batch_size: 4
        num_steps: 2
        progress: false
        inception:
          class_path: speedrun_diffusion.callbacks.features.InceptionFeatures
          init_args:
            network:
              class_path: tests.helpers.eval_toy.TinyInception
            feature_dims: {pool_3: 16, logits_unbiased: 10, spatial: 112}
"""


def test_fit_then_resume_from_last_then_validate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", TINY, *FAST, "--trainer.max_steps", "3"])
    assert cli.trainer.global_step == 3
    last = tmp_path / "runs" / "sit_tiny_cpu" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert list((tmp_path / "runs" / "sit_tiny_cpu" / "samples").glob("*.png"))
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 3

    resumed = build_cli(["fit", "--config", TINY, *FAST, "--trainer.max_steps", "5", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 5
    assert torch.load(last, weights_only=False)["global_step"] == 5

    validated = build_cli(["validate", "--config", TINY, *FAST, "--ckpt_path", "last"])
    assert "val/loss" in validated.trainer.callback_metrics

    # `validate` with an Evaluation callback from YAML prints and logs the metric table (a tiny injected
    # Inception stands in for the real weights, which this offline machine cannot download)
    eval_cfg = tmp_path / "eval.yaml"
    eval_cfg.write_text(EVAL_YAML)
    evaluated = build_cli(["validate", "--config", TINY, "--config", str(eval_cfg), *FAST, "--ckpt_path", "last"])
    for metric in ("eval/fid", "eval/inception_score"):
        assert metric in evaluated.trainer.callback_metrics
    assert "fid" in capsys.readouterr().out

    predicted = build_cli(["predict", "--config", TINY, *FAST, "--ckpt_path", "last",
                           "--trainer.limit_predict_batches", "1"])
    images = predicted.trainer.predict_loop.predictions[0]
    assert images.shape == (4, 3, 16, 16) and images.abs().max() <= 1


def test_mistyped_key_is_rejected_by_name(capsys):
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", TINY, "--model.init_args.dept", "3"], run=False)
    assert "dept" in capsys.readouterr().err


def test_a_shipped_config_is_found_by_name_and_an_unknown_one_lists_them(tmp_path, monkeypatch):
    from speedrun_diffusion.lightning_modules.cli import resolve_config

    monkeypatch.chdir(tmp_path)  # away from the repository's configs/ folder
    shipped = Path(resolve_config("sid2/tiny_cpu"))
    assert shipped.read_text() == (ROOT / "configs" / "sid2" / "tiny_cpu.yaml").read_text()
    assert resolve_config("configs/sit/tiny_cpu.yaml") == resolve_config("sit/tiny_cpu.yaml")
    with pytest.raises(FileNotFoundError, match=r"'sid2/tiny' is neither a file nor a shipped config; shipped: .*sid2/"
                                                 r"tiny_cpu"):
        resolve_config("sid2/tiny")
