"""One run per folder on the command line (issue 21, items 1, 5 and 8): every output of a run follows
``--trainer.default_root_dir``, so two runs never share a file; ``--ckpt_path last`` resumes the run's own
``last.ckpt`` and nothing else; a fresh fit into a used folder is refused; an explicit checkpoint and ``last`` are read
alike (same safety, same ``--weights_only``, same refusal of ``--model`` overrides that contradict them)."""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest
import torch

from speedrun_diffusion.callbacks.checkpointing import AtomicCheckpointIO
from speedrun_diffusion.lightning_modules.cli import build_cli
from speedrun_diffusion.lightning_modules.weights import (
    CheckpointMismatchError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
)
from tests.helpers import ROOT

TINY = str(ROOT / "configs" / "sit" / "tiny_cpu.yaml")
FAST = ["--model.init_args.depth", "1", "--model.init_args.hidden_size", "32", "--model.init_args.num_heads", "2",
        "--model.init_args.sampling.num_steps", "2", "--data.init_args.resolution", "16",
        "--data.init_args.batch_size", "4", "--data.init_args.val_size", "8", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs' relative run folders land here
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


def fit(root: str, steps: int, *extra: str, subcommand: str = "fit"):
    args = [subcommand, "--config", TINY, *FAST, "--trainer.default_root_dir", root, *extra]
    return build_cli(args + (["--trainer.max_steps", str(steps)] if subcommand == "fit" else []))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_two_roots_share_no_file_and_last_resumes_the_runs_own_checkpoint(tmp_path):
    first = fit("run_a", 3, "--model.init_args.optimizer.lr", "0.0011")
    assert type(first.trainer.strategy.checkpoint_io) is AtomicCheckpointIO  # streamed saves, on by default
    fit("run_b", 4, "--model.init_args.optimizer.lr", "0.0022")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_a", "run_b"]  # nothing in runs/sit_tiny_cpu
    for run in ("run_a", "run_b"):
        files = _files(tmp_path / run)
        assert "checkpoints/last.ckpt" in files and any(f.startswith("samples/") for f in files)
        assert any(f.startswith("tensorboard/version_0/events") for f in files)
    b_before = (tmp_path / "run_b" / "checkpoints" / "last.ckpt").read_bytes()

    resumed = fit("run_a", 5, "--model.init_args.optimizer.lr", "0.0011", "--ckpt_path", "last")
    assert Path(resumed.trainer.ckpt_path).resolve() == (tmp_path / "run_a" / "checkpoints" / "last.ckpt").resolve()
    assert resumed.trainer.global_step == 5
    a = _load(tmp_path / "run_a" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == 5 and a["hyper_parameters"]["optimizer"]["lr"] == 0.0011
    assert (tmp_path / "run_b" / "checkpoints" / "last.ckpt").read_bytes() == b_before  # the other run untouched
    assert sorted(p.name for p in (tmp_path / "run_a" / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_fresh_fit_into_a_used_root_is_refused_before_it_writes(tmp_path):
    fit("run_a", 2)
    before = _files(tmp_path / "run_a")
    with pytest.raises(FileExistsError) as info:
        fit("run_a", 2)
    message = str(info.value)
    assert str(tmp_path / "run_a" / "checkpoints") in message and "holds last.ckpt" in message
    assert "--ckpt_path last" in message and "--trainer.default_root_dir" in message
    assert _files(tmp_path / "run_a") == before  # not even a logger folder or config.yaml


def test_ckpt_path_last_without_a_checkpoint_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: this run has no checkpoint "
                                                r"run_c/checkpoints/last.ckpt"):
        fit("run_c", 2, "--ckpt_path", "last")
    assert not (tmp_path / "run_c" / "checkpoints").exists()


@pytest.mark.parametrize("ckpt", ["last", "run_a/checkpoints/last.ckpt"])
def test_model_overrides_contradicting_the_checkpoint_are_refused_naming_the_keys(ckpt):
    fit("run_a", 2)
    with pytest.raises(CheckpointMismatchError) as info:
        fit("run_a", 4, "--ckpt_path", ckpt, "--model.init_args.depth", "2",
            "--model.init_args.nonfinite.policy", "raise", "--model.init_args.compile.mode", "max-autotune")
    message = str(info.value)
    assert "compile" not in message  # how a run is compiled changes nothing it trains: never a conflict
    assert "run_a/checkpoints/last.ckpt" in message
    assert "model.init_args.depth: checkpoint 1, config 2" in message
    assert "model.init_args.nonfinite.policy: checkpoint 'skip', config 'raise'" in message
    # evaluation may sample differently from training: the sampling group is not a conflict there
    validated = fit("run_a", 0, "--ckpt_path", ckpt, "--model.init_args.sampling.num_steps", "3",
                    subcommand="validate")
    assert "val/loss" in validated.trainer.callback_metrics


def _with_foreign_object(path: Path) -> None:
    """Re-save a checkpoint with an entry weights_only=True refuses (a harmless but not allowlisted global)."""
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["written_on"] = datetime.date(2024, 1, 1)
    torch.save(checkpoint, path)


@pytest.mark.parametrize("ckpt", ["last", "run_a/checkpoints/last.ckpt"])
def test_an_explicit_file_and_last_are_read_alike(tmp_path, ckpt):
    fit("run_a", 2)
    last = tmp_path / "run_a" / "checkpoints" / "last.ckpt"
    _with_foreign_object(last)
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load run_a/checkpoints/last.ckpt.*datetime.date.*"
                                                     r"--weights_only false"):
        fit("run_a", 3, "--ckpt_path", ckpt)
    resumed = fit("run_a", 3, "--ckpt_path", ckpt, "--weights_only", "false")  # a file you trust
    assert resumed.trainer.global_step == 3 and _load(last)["global_step"] == 3


@pytest.mark.parametrize("ckpt", ["last", "run_a/checkpoints/last.ckpt"])
def test_a_truncated_checkpoint_is_named(tmp_path, ckpt):
    fit("run_a", 2)
    last = tmp_path / "run_a" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(UnreadableCheckpointError, match=r"cannot read run_a/checkpoints/last.ckpt \(1000 bytes"):
        fit("run_a", 3, "--ckpt_path", ckpt)
