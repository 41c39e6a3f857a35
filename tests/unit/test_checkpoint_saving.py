"""How ``AtomicModelCheckpoint`` writes (issue 21, items 1, 3 and 6): through ``AtomicCheckpointIO`` by default
(streamed to a file beside the target, never staged in memory and ``$TMPDIR``), into a folder checked writable at fit
start and owned by one run (a fresh fit into a folder holding another run's checkpoints is refused; the last
checkpoint is always ``last.ckpt``), and a save that fails removes its partial file and names the checkpoint."""
from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from speedrun_diffusion.callbacks import checkpointing
from speedrun_diffusion.callbacks.checkpointing import AtomicCheckpointIO, AtomicModelCheckpoint
from tests.helpers.toy_recipe import ToyRecipe, toy_loader


class CountBatches(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args) -> None:
        self.batches += 1


def _fit(folder: Path, steps: int, every: int = 2, ckpt_path: str | Path | None = None,
         counter: CountBatches | None = None, **trainer_kwargs) -> L.Trainer:
    """A toy fit saving ``last.ckpt`` every ``every`` steps into ``folder`` (``trainer.counter`` counts batches)."""
    counter = counter or CountBatches()
    callback = AtomicModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=every, save_top_k=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=folder.parent, callbacks=[callback, counter],
                        **trainer_kwargs)
    trainer.counter = counter
    trainer.fit(ToyRecipe(), train_dataloaders=toy_loader(), ckpt_path=ckpt_path)
    return trainer


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_saves_stream_beside_the_target_and_never_use_the_temp_folder(tmp_path, monkeypatch):
    # Lightning's TorchCheckpointIO writes through a file in tempfile's folder: a missing (or full) one fails it
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_temp_folder"))
    trainer = _fit(tmp_path / "ck", 4)
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.ckpt"]
    assert _step(tmp_path / "ck" / "last.ckpt") == 4
    assert not (tmp_path / "no_temp_folder").exists()


def test_a_checkpoint_io_plugin_the_user_chose_is_kept(tmp_path):
    class MyIO(TorchCheckpointIO):
        pass

    trainer = _fit(tmp_path / "ck", 2, plugins=[MyIO()])
    assert type(trainer.strategy.checkpoint_io) is MyIO


def test_an_unwritable_checkpoint_folder_is_refused_at_fit_start(tmp_path):
    blocker, counter = tmp_path / "a_file", CountBatches()
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=rf"checkpoint folder {blocker / 'ck'} is not writable .*default_root_dir"):
        _fit(blocker / "ck", 6, every=3, counter=counter)
    assert counter.batches == 0  # found before the first step, not at the first save


def _full_disk_on_save(monkeypatch, at: int) -> list[Path]:
    """Make the ``at``-th ``Trainer.save_checkpoint`` write a partial file and fail like a full disk (no file named)."""
    calls: list[Path] = []
    real = L.Trainer.save_checkpoint

    def save(trainer, filepath, *args, **kwargs):
        calls.append(Path(filepath))
        if len(calls) == at:
            Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(trainer, filepath, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", save)
    return calls


def test_a_failed_save_removes_its_partial_file_and_names_the_checkpoint(tmp_path, monkeypatch):
    calls = _full_disk_on_save(monkeypatch, at=2)
    with pytest.raises(OSError) as info:
        _fit(tmp_path / "ck", 6)
    final = tmp_path / "ck" / "last.ckpt"
    assert info.value.errno == errno.ENOSPC and str(final) in str(info.value) and "No space left" in str(info.value)
    assert len(calls) == 2
    assert sorted(p.name for p in final.parent.iterdir()) == ["last.ckpt"]  # no partial file keeps the disk full
    assert _step(final) == 2  # the previous checkpoint is intact


def test_a_full_disk_inside_the_streamed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    real, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", save)
    with pytest.raises(OSError, match=r"could not save checkpoint .*last.ckpt.*No space left on device"):
        _fit(tmp_path / "ck", 6)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.ckpt"]
    assert _step(tmp_path / "ck" / "last.ckpt") == 2


def test_a_fresh_fit_into_another_runs_folder_is_refused_before_any_batch(tmp_path):
    folder = tmp_path / "ck"
    _fit(folder, 2)
    counter = CountBatches()
    with pytest.raises(FileExistsError) as info:
        _fit(folder, 4, counter=counter)
    assert counter.batches == 0
    message = str(info.value)
    assert str(folder) in message and "last.ckpt" in message and "--ckpt_path last" in message
    assert "--trainer.default_root_dir" in message
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"] and _step(folder / "last.ckpt") == 2
    # resuming the run that owns the folder is what it is for
    resumed = _fit(folder, 4, ckpt_path=folder / "last.ckpt")
    assert resumed.global_step == 4 and resumed.counter.batches == 2
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"] and _step(folder / "last.ckpt") == 4


def test_a_resume_with_another_checkpoint_interval_still_writes_last_ckpt(tmp_path):
    # another every_n_train_steps changes the callback's state key, so its state is not restored; Lightning would
    # then write last-v1.ckpt beside the older last.ckpt, which --ckpt_path last would keep finding
    folder = tmp_path / "ck"
    _fit(folder, 2, every=2)
    _fit(folder, 6, every=3, ckpt_path=folder / "last.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"] and _step(folder / "last.ckpt") == 6
