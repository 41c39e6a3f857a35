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
accept one; :class:`AtomicModelCheckpoint` installs it by default in place of Lightning's ``TorchCheckpointIO``,
whose save serialises the whole checkpoint into memory and writes it through a file in the system temp folder
(``$TMPDIR``: a small ``/tmp`` failed every save, a kill left full-size files there). Saves stream to the
temporary sibling instead; a save that fails (a full disk) removes its partial file and names the checkpoint.

One run per folder. At fit start :class:`AtomicModelCheckpoint` checks that its folder is writable (not at the first
save, thousands of steps later) and that it belongs to this run: a fit that does not resume from a checkpoint of the
folder, while the folder already holds checkpoints, is refused with an error naming the folder and the two ways out
(``--ckpt_path last``, or another ``--trainer.default_root_dir``). So ``last.ckpt`` is always the newest state of the
run that owns the folder — Lightning would write the new run's beside it as ``last-v1.ckpt`` and leave the older
``last.ckpt`` standing for ``--ckpt_path last`` to find.

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
           "commit_checkpoint", "install_atomic_checkpoint_io", "safe_torch_load"]


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


def install_atomic_checkpoint_io(strategy: Any) -> bool:
    """Give ``strategy`` an :class:`AtomicCheckpointIO` if it would save through Lightning's default
    ``TorchCheckpointIO`` (in-memory copy + ``$TMPDIR``); a plugin the user chose is kept. True if installed."""
    try:
        current = strategy.checkpoint_io
    except (AttributeError, NotImplementedError):
        return False
    if type(current) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True


def _unwritable(folder: Path) -> str | None:
    """Why a checkpoint cannot be written in ``folder`` (created if missing), or None: a file is created and removed
    there, as a save would."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return (f"checkpoint folder {folder} is not writable ({error.strerror or error}): choose a writable "
                "--trainer.default_root_dir (checkpoints go to <default_root_dir>/checkpoints) or the checkpoint "
                "callback's dirpath")
    return None


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
    """``ModelCheckpoint`` whose saves stream to a temporary sibling and rename atomically, in a folder that belongs
    to one run (module docstring).

    Same arguments as Lightning's ``ModelCheckpoint``; every config saves ``last.ckpt`` with it
    (``save_last: true`` with ``every_n_train_steps`` or ``train_time_interval``).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        install_atomic_checkpoint_io(trainer.strategy)
        self._folder_claimed = False
        local = self.dirpath is not None and _is_local_file_protocol(self.dirpath)
        if trainer.is_global_zero and local and Path(self.dirpath).is_dir():
            for old in Path(self.dirpath).glob(".*.old"):  # a kill between the two renames of a directory swap
                final = old.with_name(old.name[1:-len(".old")])
                if not final.exists():
                    os.replace(old, final)
        if stage == "fit" and local:
            # found now, not at the first save thousands of steps in
            problem = _unwritable(Path(self.dirpath)) if trainer.is_global_zero else None
            problem = trainer.strategy.broadcast(problem, src=0)
            if problem:
                raise OSError(problem)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the checkpoint is restored before this hook unless the strategy restores after setup (ModelParallel)
        if not trainer.strategy.restore_checkpoint_after_setup:
            self._claim_folder(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._claim_folder(trainer)

    def folder_problem(self, ckpt_path: _PATH | None) -> str | None:
        """Why a fit resuming from ``ckpt_path`` (None: a fresh run) may not write into this callback's folder: the
        folder holds checkpoints and the fit does not resume from one of them (it belongs to another run). None if
        it may. The CLI asks before anything is written; the callback asks again at fit start."""
        if self.dirpath is None or not _is_local_file_protocol(self.dirpath) or not Path(self.dirpath).is_dir():
            return None
        folder = Path(self.dirpath)
        held = sorted(p.name for p in folder.iterdir() if p.name.endswith(self.FILE_EXTENSION)
                      and not p.name.startswith("."))
        resumed = ckpt_path is not None and Path(os.path.realpath(ckpt_path)).parent == Path(os.path.realpath(folder))
        if not held or resumed:
            return None
        more = f" (and {len(held) - 1} more)" if len(held) > 1 else ""
        return (f"checkpoint folder {folder} already holds {held[0]}{more} of an earlier run, and this fit does not "
                "resume from it: resume that run with --ckpt_path last, or start this one in another folder with "
                "--trainer.default_root_dir DIR")

    def _claim_folder(self, trainer: L.Trainer) -> None:
        """Refuse a fit that does not resume from this folder while the folder holds checkpoints (of another run),
        then make ``last.ckpt`` the name of this run's last checkpoint (no ``last-v1.ckpt`` beside a stale one)."""
        if getattr(self, "_folder_claimed", False) or self.dirpath is None or not _is_local_file_protocol(self.dirpath):
            return
        self._folder_claimed = True
        problem = self.folder_problem(trainer.ckpt_path) if trainer.is_global_zero else None
        problem = trainer.strategy.broadcast(problem, src=0)
        if problem:
            raise FileExistsError(problem)
        # the folder is this run's: its last checkpoint is always last.ckpt, also when the checkpoint resumed from
        # did not restore this callback's state (another every_n_train_steps changes its state key)
        if self.save_last and "{" not in self.CHECKPOINT_NAME_LAST:
            self.last_model_path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)

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
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
        except BaseException as error:
            if trainer.is_global_zero:  # a partial file would keep a full disk full
                _remove(tmp)
                for partial in tmp.parent.glob(f".{tmp.name}.*.tmp"):
                    _remove(partial)
            if isinstance(error, OSError):  # torch / the OS name no file: name the checkpoint
                raise OSError(error.errno, f"could not save checkpoint {final} (partial {tmp} removed): "
                                           f"{error.strerror or error}") from error
            raise
        trainer.strategy.barrier("atomic_checkpoint_written")
        if trainer.is_global_zero:
            commit_checkpoint(tmp, final)
        trainer.strategy.barrier("atomic_checkpoint_committed")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
