"""Fault tolerance (docs/fault-tolerance.md): non-finite losses (skip or raise), atomic checkpoints, configs that
save `last.ckpt` periodically, and training loaders that resume mid-epoch at the exact sample."""
from __future__ import annotations

import glob
import logging
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from speedrun_diffusion.callbacks.checkpointing import AtomicModelCheckpoint, atomic_torch_save, commit_checkpoint
from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.datamodules.resumable import EpochPermutationSampler, ResumableDataLoader
from speedrun_diffusion.lightning_modules.nonfinite import NonFiniteConfig, NonFiniteGuard, NonFiniteLossError
from tests.helpers import ROOT
from tests.helpers.toy_recipe import RecordTrajectory, ToyRecipe, toy_loader


class NaNAtStep(ToyRecipe):
    """The toy regression whose auxiliary loss term is NaN at one global step."""

    def __init__(self, nan_step: int, nonfinite: str) -> None:
        super().__init__()
        self.nan_step = nan_step
        self.nonfinite_guard = NonFiniteGuard(NonFiniteConfig(policy=nonfinite))

    def compute_losses(self, batch, generator=None):
        losses = super().compute_losses(batch)
        bad = self.training and self.global_step == self.nan_step
        aux = torch.tensor(float("nan") if bad else 0.0)
        return {"loss": losses["loss"] + aux, "mse": losses["mse"], "aux": aux}


def _trainer(tmp_path: Path, steps: int, *callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
                     enable_checkpointing=False)


def test_nonfinite_skip_leaves_weights_unchanged_warns_counts_and_checkpoints(tmp_path, caplog):
    recorder, module = RecordTrajectory(), NaNAtStep(nan_step=2, nonfinite="skip")
    trainer = _trainer(tmp_path, 4, recorder)
    with caplog.at_level(logging.WARNING, logger="speedrun_diffusion.lightning_modules.nonfinite"):
        trainer.fit(module, train_dataloaders=toy_loader())
    assert trainer.global_step == 4  # the skipped batch still counts as a step
    traj = recorder.trajectory
    for name in traj[0]:
        assert torch.equal(traj[3][name], traj[2][name]), name  # step 2: no update
        assert not torch.equal(traj[2][name], traj[1][name]) or "offset" in name  # other steps train
        assert not torch.equal(traj[4][name], traj[3][name])
    assert module.nonfinite_steps == 1
    assert trainer.callback_metrics["train/nonfinite_steps"] == 1
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "aux=nan" in message and "loss=nan" in message and "mse" not in message
    assert "global step 2" in message and "1 skipped so far" in message

    trainer.save_checkpoint(tmp_path / "skip.ckpt")
    saved = torch.load(tmp_path / "skip.ckpt", weights_only=True)
    assert saved["nonfinite_steps"] == 1 and saved["recipe"].endswith("NaNAtStep")
    restored = NaNAtStep(nan_step=-1, nonfinite="skip")
    restored.on_load_checkpoint(saved)
    assert restored.nonfinite_steps == 1


def test_nonfinite_raise_names_the_term_and_step(tmp_path):
    recorder = RecordTrajectory()
    trainer = _trainer(tmp_path, 4, recorder)
    with pytest.raises(NonFiniteLossError, match=r"aux=nan.*global step 2") as info:
        trainer.fit(NaNAtStep(nan_step=2, nonfinite="raise"), train_dataloaders=toy_loader())
    assert "nonfinite.policy: skip" in str(info.value)
    assert len(recorder.trajectory) == 3  # steps 0 and 1 ran, nothing after the fault


def test_nonfinite_policy_is_validated():
    from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe

    with pytest.raises(ValueError, match="nonfinite.policy"):
        DiffusionRecipe(nonfinite={"policy": "ignore"})
    with pytest.raises(TypeError, match="NonFiniteConfig has no field"):
        DiffusionRecipe(nonfinite={"polcy": "skip"})


# ---------------------------------------------------------------- checkpoints
SLOW_SAVE = """
import sys, time, torch
sys.path.insert(0, {root!r})
from speedrun_diffusion.callbacks.checkpointing import atomic_torch_save

class Slow:
    def __reduce__(self):
        print("saving", flush=True)
        time.sleep(60)
        return (int, (0,))

atomic_torch_save({{"step": 1, "w": torch.ones(3)}}, {path!r})
atomic_torch_save({{"step": 2, "w": torch.zeros(1000), "slow": Slow()}}, {path!r})
"""


def test_a_save_killed_midway_never_corrupts_last(tmp_path):
    last = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE.format(root=str(ROOT), path=str(last))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving", proc.stderr.read()
    assert list(tmp_path.glob(".last.ckpt.*.tmp"))  # the second save is under way
    proc.kill()
    proc.wait(timeout=30)
    saved = torch.load(last, weights_only=True)
    assert saved["step"] == 1 and torch.equal(saved["w"], torch.ones(3))
    atomic_torch_save({"step": 3}, last)  # the next save removes the orphan
    assert not list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert torch.load(last, weights_only=True) == {"step": 3}


def test_failed_save_keeps_previous_file_and_no_temporary(tmp_path):
    last = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, last)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"step": 2, "bad": Unpicklable()}, last)
    assert torch.load(last, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_sharded_directory_commit_and_recovery(tmp_path):
    final, tmp = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.tmp"
    final.mkdir()
    (final / "shard0").write_text("old")
    tmp.mkdir()
    (tmp / "shard0").write_text("new")
    commit_checkpoint(tmp, final)
    assert (final / "shard0").read_text() == "new" and not tmp.exists()
    assert not (tmp_path / ".last.ckpt.old").exists()
    # a kill between the two renames leaves only .last.ckpt.old: setup renames it back
    final.rename(tmp_path / ".last.ckpt.old")
    callback = AtomicModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = _trainer(tmp_path, 1)
    callback.setup(trainer, ToyRecipe(), "fit")
    assert (final / "shard0").read_text() == "new"


def test_atomic_model_checkpoint_in_a_fit(tmp_path):
    callback = AtomicModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=2, save_top_k=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(ToyRecipe(), train_dataloaders=toy_loader())
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["last.ckpt"]
    assert torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)["global_step"] == 5


def _trainer_section(path: str) -> dict:
    return (yaml.safe_load(Path(path).read_text()) or {}).get("trainer") or {}


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "configs" / "*" / "*.yaml"))),
                         ids=lambda p: str(Path(p).relative_to(ROOT / "configs")))
def test_every_training_config_saves_last_atomically_and_exposes_clipping(path):
    trainer = _trainer_section(path)
    if "max_steps" not in trainer or "callbacks" not in trainer:
        pytest.skip("not a training config (or an add-on that keeps its base config's callbacks)")
    checkpoints = [c for c in trainer.get("callbacks", []) if "Checkpoint" in c["class_path"]]
    assert [c["class_path"].rpartition(".")[2] for c in checkpoints] == ["AtomicModelCheckpoint"]
    args = checkpoints[0]["init_args"]
    assert args["save_last"] is True
    assert args.get("every_n_train_steps") or args.get("train_time_interval")
    assert "gradient_clip_val" in trainer
    if "tiny_cpu" in path:  # tiny runs: a checkpoint about every minute of CPU time (0.2-0.3 s per step)
        assert args["every_n_train_steps"] <= 250


# ---------------------------------------------------------------- resumable training loaders
def _labels_and_first_pixels(batch) -> tuple:
    return batch["label"].tolist(), batch["image"][:, 0, 0, 0].tolist()


def test_loader_resumes_mid_epoch_with_exactly_the_remaining_batches():
    data = SyntheticDataModule(resolution=16, num_classes=10, train_size=24, val_size=4, batch_size=4, seed=3)
    reference = data.train_dataloader()
    epoch0 = [_labels_and_first_pixels(b) for b in reference]
    epoch1 = [_labels_and_first_pixels(b) for b in reference]  # a full pass advanced the epoch
    assert epoch0 != epoch1 and len(epoch1) == 6

    interrupted = data.train_dataloader()
    interrupted.sampler.set_epoch(1)
    seen = []
    for batch in interrupted:
        seen.append(_labels_and_first_pixels(batch))
        if len(seen) == 2:
            break
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "samples": 8, "batch_size": 4, "num_replicas": 1, "dataset_size": 24, "seed": 3}

    resumed = data.train_dataloader()
    resumed.load_state_dict(state)
    rest = [_labels_and_first_pixels(b) for b in resumed]
    assert seen + rest == epoch1
    assert len(resumed) == 6  # the trainer still sees the whole epoch's length
    assert resumed.state_dict()["epoch"] == 1 and resumed.sampler.epoch == 2
    # a stored position applies only to its own epoch
    other = data.train_dataloader()
    other.load_state_dict(state)
    other.sampler.set_epoch(2)
    assert len(list(other)) == 6


def test_sampler_splits_the_epoch_over_ranks_and_resumes_each_rank():
    data = list(range(22))
    shards = [list(EpochPermutationSampler(data, seed=5, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 11
    assert sorted(shards[0] + shards[1]) == sorted(EpochPermutationSampler(data, seed=5).order(0).tolist())
    loaders = [ResumableDataLoader(data, 2, EpochPermutationSampler(data, seed=5, num_replicas=2, rank=r))
               for r in (0, 1)]
    full = [[b.tolist() for b in loader] for loader in loaders]
    for rank, loader in enumerate(loaders):
        loader.sampler.set_epoch(0)
        it = iter(loader)
        next(it)
        next(it)
        state = loader.state_dict()
        assert state["samples"] == 8  # global offset: 2 batches x 2 per rank x 2 ranks
        fresh = ResumableDataLoader(data, 2, EpochPermutationSampler(data, seed=5, num_replicas=2, rank=rank))
        fresh.load_state_dict(state)
        assert [b.tolist() for b in fresh] == full[rank][2:]


def test_changed_data_set_restarts_the_epoch_with_a_warning():
    data = SyntheticDataModule(resolution=16, train_size=24, val_size=4, batch_size=4)
    state = {"epoch": 0, "samples": 8, "batch_size": 4, "num_replicas": 1, "dataset_size": 40, "seed": 0}
    loader = data.train_dataloader()
    with pytest.warns(UserWarning, match="40 samples"):
        loader.load_state_dict(state)
    assert len(list(loader)) == 6


def test_iterating_loaders_leaves_the_global_rng_alone():
    data = SyntheticDataModule(resolution=16, train_size=8, val_size=4, batch_size=4)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for loader in (data.train_dataloader(), data.val_dataloader()):
        list(loader)
    assert torch.equal(torch.rand(3), expected)  # a resumed run restores the RNG; loaders must not move it

