"""`safe_torch_load`: ``torch.load`` restricted to tensors and plain containers, with a clear refusal.

DESIGN "Contracts": weights load from safetensors or ``torch.load(weights_only=True)``, never arbitrary
pickles. ``weights_only=True`` unpickles only tensors, primitive types, plain containers and globals
allow-listed by the caller (``allowed``), so a file carrying a code payload (an object whose
``__reduce__`` calls ``os.system``, ...) is refused before anything runs; the refusal is raised as
:class:`UnsafeCheckpointError` naming the file and the refused global. Only an explicit
``weights_only=False`` (a caller that trusts the file) loads arbitrary pickles.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A file needs arbitrary (possibly code-executing) unpickling; it was refused unread."""


def safe_torch_load(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    weights_only: bool | None = None,
    allowed: Sequence[Any] = (),
    mmap: bool | None = None,
) -> Any:
    """``torch.load(path, weights_only=True)`` (``allowed`` globals permitted; ``mmap`` maps tensors lazily);
    FileNotFoundError or :class:`UnsafeCheckpointError` naming ``path``. ``weights_only=False`` must be asked
    for explicitly."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise FileNotFoundError(f"weight / checkpoint file {path} not found")
    if weights_only is False:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = next((line.strip() for line in str(error).splitlines() if "Unsupported" in line or "GLOBAL" in line),
                       str(error).splitlines()[0] if str(error) else type(error).__name__)
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds pickled objects other than tensors and plain containers, which could "
            f"run code ({refused}). Load only files you trust with weights_only=False (CLI: --weights_only false)"
        ) from error
