"""Checkpoints that a kill can never corrupt, loaded without executing pickles.

Saving (:class:`AtomicModelCheckpoint`, the ``ModelCheckpoint`` of every config). Every rank
writes the checkpoint to a temporary sibling ``.<name>.tmp`` (a file, or the directory of a
sharded FSDP2 checkpoint) through the strategy as usual; once all ranks are done, rank 0 fsyncs it
and moves it over the destination with ``os.replace`` (atomic on POSIX within one file system).
A process killed at any moment leaves either the previous ``last.ckpt`` or the new one, never a
partial file. A sharded checkpoint is a directory, which cannot be replaced atomically: the old
one is first renamed to ``.<name>.old`` and removed after the swap; ``setup`` renames it back if
a kill fell between the two renames. (Lightning's own writer goes through an fsspec transaction
whose temporary file lives in the system temp directory, so on another file system its final move
is a copy that a kill can interrupt.)

:class:`AtomicCheckpointIO` is the same idea as a ``CheckpointIO`` plugin for strategies that
accept one (single device, DDP; not ``ModelParallelStrategy``): pass ``plugins=[AtomicCheckpointIO()]``.

Loading. ``AtomicCheckpointIO.load_checkpoint`` is :func:`~lightning_modules.weights.safe_torch_load`,
``torch.load(weights_only=True)``: tensors, primitive types and containers only, so a file carrying
a code payload raises :class:`UnsafeCheckpointError` naming the file before anything runs. An explicit
``weights_only=False`` from the caller (``--weights_only false``, for a trusted file holding
custom objects) is honoured. The CLI passes ``weights_only=True`` to Lightning's resume.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable
from weakref import proxy

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint

from speedrun_diffusion.lightning_modules.weights import UnsafeCheckpointError, safe_torch_load

__all__ = ["AtomicCheckpointIO", "AtomicModelCheckpoint", "UnsafeCheckpointError", "atomic_torch_save",
           "commit_checkpoint", "safe_torch_load"]


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)`` through a same-directory temporary file + fsync + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left behind by a killed save
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself (not possible on every OS / file system)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic same-directory saves, ``weights_only=True`` loads (module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)
        return safe_torch_load(path, map_location, weights_only)


def _fsync_path(path: Path, tree: bool = True) -> None:
    """fsync a file, or a directory (with ``tree`` every entry below it too) — best effort."""
    paths = [*path.rglob("*"), path] if tree and path.is_dir() else [path]
    for p in paths:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def commit_checkpoint(tmp: Path, final: Path) -> None:
    """Move a completely written checkpoint ``tmp`` (file or sharded directory) to ``final`` atomically."""
    _fsync_path(tmp)
    if tmp.is_file() and not final.is_dir():
        os.replace(tmp, final)
    else:
        old = final.with_name(f".{final.name}.old")
        _remove(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    _fsync_path(final.parent, tree=False)


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose saves go through a temporary sibling and an atomic rename (module docstring).

    Same arguments as Lightning's ``ModelCheckpoint``; every config saves ``last.ckpt`` with it
    (``save_last: true`` with ``every_n_train_steps`` or ``train_time_interval``).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath is not None and Path(self.dirpath).is_dir():
            for old in Path(self.dirpath).glob(".*.old"):  # a kill between the two renames of a directory swap
                final = old.with_name(old.name[1:-len(".old")])
                if not final.exists():
                    os.replace(old, final)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning writes last.ckpt at the end only if nothing was saved before; the final weights matter too
        if self.save_last and self._last_checkpoint_saved and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        final = Path(filepath)
        tmp = final.with_name(f".{final.name}.tmp")
        if trainer.is_global_zero:
            _remove(tmp)  # a killed earlier save
        trainer.strategy.barrier("atomic_checkpoint_clean")
        trainer.save_checkpoint(tmp, self.save_weights_only)
        trainer.strategy.barrier("atomic_checkpoint_written")
        if trainer.is_global_zero:
            commit_checkpoint(tmp, final)
        trainer.strategy.barrier("atomic_checkpoint_committed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
