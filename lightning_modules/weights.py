"""Reading weights: the one place where a file on disk becomes tensors, and tensors become a module's weights.

Every loader of the library goes through these functions — resuming, ``init_from`` fine-tunes, stage-1 tokenizers,
autoguidance guides, official-checkpoint import, pretrained encoders, evaluation networks — so every file is read
the same safe way and every mismatch is reported the same readable way:

* :func:`safe_torch_load` — ``torch.load(weights_only=True)``: tensors, primitive types and plain containers only
  (DESIGN "Contracts"), so a file carrying a code payload (an object whose ``__reduce__`` calls ``os.system``) is
  refused before anything runs, as :class:`UnsafeCheckpointError` naming the file. Only an explicit
  ``weights_only=False`` (a caller that trusts the file) loads arbitrary pickles. An empty, truncated or foreign
  file raises :class:`UnreadableCheckpointError` naming it (torch's own errors name no file).
* :func:`read_state_dict` — a state dict from a ``.safetensors`` or torch file (unwrapping ``state_dict`` / ``model``).
* :func:`read_checkpoint` — a Lightning checkpoint (a dict), :func:`recipe_of` — the recipe class that wrote it.
* :func:`weights_under` — the tensors of one submodule (``net.``, ``tokenizer.``) with the prefix stripped.
* :func:`ema_weights` / :func:`network_weights` — ``callbacks.EMA``'s shadow, and a network's weights with it.
* :func:`state_dict_diff` / :func:`load_exact` — strict loading whose error names every missing key, unexpected
  key and shape mismatch, and the file they came from.

This module imports nothing else of the library: every layer may use it.
"""
from __future__ import annotations

import importlib
import os
import pickle
import pickletools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "CheckpointMismatchError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
    "check_written_by",
    "ema_weights",
    "load_exact",
    "network_weights",
    "qualified_class_name",
    "read_checkpoint",
    "read_state_dict",
    "read_training_checkpoint",
    "recipe_of",
    "safe_torch_load",
    "state_dict_diff",
    "weights_under",
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A file needs arbitrary (possibly code-executing) unpickling; it was refused unread."""


class UnreadableCheckpointError(ValueError):
    """A weight / checkpoint file exists but is empty, truncated or not a torch file; the message names it."""


class CheckpointMismatchError(ValueError):
    """Weights were written by another recipe or for another network; the message names the file."""


def safe_torch_load(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    weights_only: bool | None = None,
    allowed: Sequence[Any] = (),
    mmap: bool | None = None,
) -> Any:
    """``torch.load(path, weights_only=True)`` (``allowed`` globals permitted; ``mmap`` maps tensors lazily);
    FileNotFoundError, :class:`UnsafeCheckpointError` or :class:`UnreadableCheckpointError` naming ``path``.
    ``weights_only=False`` must be asked for explicitly."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise FileNotFoundError(f"weight / checkpoint file {path} not found")
    try:
        if weights_only is False:
            return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines()]
        refused = next((line for line in lines if "Unsupported" in line or "GLOBAL" in line), None)
        operand = re.search(r"Unsupported operand (\d+)", str(error))
        if refused is None or (operand and chr(int(operand.group(1))) not in pickletools.code2op):
            # the weights-only unpickler also reports plain damage: a cut stream, bytes that are no pickle opcode
            raise _unreadable(path, error) from error
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds pickled objects other than tensors and plain containers, which could "
            f"run code ({refused}). Load only files you trust with weights_only=False (CLI: --weights_only false)"
        ) from error
    except (EOFError, RuntimeError, KeyError, ValueError, IndexError, UnicodeDecodeError) as error:
        # torch reports an empty file as a bare EOFError and a cut zip as a miniz RuntimeError, naming no file
        raise _unreadable(path, error) from error


def _unreadable(path: Any, error: BaseException) -> UnreadableCheckpointError:
    """The one-line error of a file torch could not read: its path, size and torch's first line."""
    try:
        size = f"{os.path.getsize(path)} bytes"
    except (OSError, TypeError):
        size = "size unknown"
    first = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else "no message"
    what = "it is empty" if size == "0 bytes" else "truncated, corrupt or not written by torch.save?"
    return UnreadableCheckpointError(f"cannot read {path} ({size}; {what}): {type(error).__name__}: {first}")


def read_state_dict(path: str | os.PathLike[str], what: str = "weights",
                    unwrap: Sequence[str] = ("state_dict", "model")) -> dict[str, Tensor]:
    """A state dict from a local ``.safetensors`` or torch file (tensors only); a dict holding it under one of
    ``unwrap`` is unwrapped. Errors name ``what`` and the path."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {str(path)!r} (give an existing local file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = safe_torch_load(path)
    for key in unwrap:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise TypeError(f"{what} at {str(path)!r} is not a state dict ({type(state).__name__})")
    return dict(state)


def read_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> dict[str, Any]:
    """A Lightning checkpoint (a dict with ``state_dict``, ``hyper_parameters``, ``callbacks``, ...), read safely."""
    checkpoint = safe_torch_load(path)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{what} {path} is not a Lightning checkpoint (a dict), but a {type(checkpoint).__name__}")
    return dict(checkpoint)


def read_training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning checkpoint from a file, or whole from a sharded (distributed) checkpoint folder as
    ``ModelParallelStrategy`` writes it: the ``torch.distributed.checkpoint`` shards (model and optimizer states,
    gathered on the CPU by torch's ``dcp_to_torch_save``) plus its ``meta.pt`` (everything else, read safely).
    torch's reader unpickles the folder's ``.metadata``: read only folders you trust."""
    path = Path(path)
    if not path.is_dir():
        return read_checkpoint(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is a folder but not a sharded checkpoint (no .metadata)")
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # beside the checkpoint: its disk holds it
        whole = Path(tmp) / "whole.pt"
        dcp_to_torch_save(path, whole)
        checkpoint = dict(safe_torch_load(whole))
    if (path / "meta.pt").is_file():
        checkpoint.update(safe_torch_load(path / "meta.pt"))
    return checkpoint


def qualified_class_name(class_path: str) -> str:
    """``module.Class`` where the class is defined (``speedrun_diffusion.lightning_modules.SiT`` →
    ``speedrun_diffusion.lightning_modules.sit.SiT``); checkpoints written before the ``speedrun_diffusion``
    namespace (``lightning_modules.sit.SiT``) are read as their namespaced name. Unimportable paths are
    returned as given."""
    if class_path.split(".", 1)[0] in ("lightning_modules", "callbacks", "datamodules"):
        class_path = "speedrun_diffusion." + class_path
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return class_path
    return f"{cls.__module__}.{cls.__qualname__}"


def recipe_of(checkpoint: Mapping[str, Any]) -> str | None:
    """The recipe class that wrote ``checkpoint``: its ``recipe`` entry (``DiffusionRecipe.on_save_checkpoint``)
    or LightningCLI's ``_class_path`` hyper-parameter, as ``module.Class`` where the class is defined."""
    saved = checkpoint.get("recipe") or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    return qualified_class_name(str(saved)) if saved else None


def check_written_by(checkpoint: Mapping[str, Any], recipe: str, source: str, remedy: str) -> None:
    """Raise :class:`CheckpointMismatchError` if ``checkpoint`` (named ``source`` in the message) was written by
    another recipe class than ``recipe`` (``module.Class``); ``remedy`` says what to pass instead. A checkpoint
    that names no recipe passes: the key and shape checks of its loader decide."""
    saved = recipe_of(checkpoint)
    if saved is not None and saved != qualified_class_name(recipe):
        raise CheckpointMismatchError(f"{source} was written by recipe {saved}, not {qualified_class_name(recipe)}: "
                                      f"{remedy}")


def weights_under(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` whose key starts with ``prefix`` (``"net."``), the prefix stripped."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def ema_weights(checkpoint: Mapping[str, Any]) -> dict[str, Tensor] | None:
    """The ``callbacks.EMA`` shadow (``name -> tensor`` of the network's parameters) stored in a Lightning
    checkpoint, or None if the run had no EMA callback."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("EMA") and isinstance(state, Mapping) and isinstance(state.get("shadow"), Mapping):
            return dict(state["shadow"])
    return None


def network_weights(checkpoint: Mapping[str, Any], prefix: str = "net.", use_ema: bool = True,
                    source: Any = "checkpoint") -> tuple[dict[str, Tensor], bool]:
    """(state dict of the network under ``prefix``, whether the EMA shadow was used): the raw tensors (buffers
    included), their parameters replaced by the EMA shadow when the checkpoint has one and ``use_ema``."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise ValueError(f"{source} has no state_dict: not a Lightning checkpoint")
    weights = weights_under(state, prefix)
    if not weights:
        raise ValueError(f"{source}: its state_dict has no '{prefix}*' tensors")
    shadow = ema_weights(checkpoint) if use_ema else None
    if shadow is None:
        return weights, False
    return {**weights, **shadow}, True


def state_dict_diff(expected: Mapping[str, Tensor], given: Mapping[str, Tensor],
                    names: tuple[str, str] = ("checkpoint", "model")) -> str:
    """"" if ``given`` fits ``expected`` key for key and shape for shape, else what differs: missing keys,
    unexpected keys and shape mismatches (``names`` the given and the expected side), each counted and listed
    (the first four). A 0-dim tensor fits a one-element one (a scalar parameter saved either way)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    def differs(k: str) -> bool:
        a, b = given[k], expected[k]
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape != b.shape and not a.numel() == b.numel() == 1

    shapes = sorted(f"{k}: {names[0]} {tuple(given[k].shape)} vs {names[1]} {tuple(expected[k].shape)}"
                    for k in set(expected) & set(given) if differs(k))
    parts = [f"{name} ({len(items)}): {', '.join(items[:4])}{', ...' if len(items) > 4 else ''}"
             for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", shapes)) if items]
    return "; ".join(parts)


def load_exact(module: nn.Module, weights: Mapping[str, Tensor], source: Any,
               error: type[Exception] = CheckpointMismatchError,
               names: tuple[str, str] = ("checkpoint", "model")) -> nn.Module:
    """``module.load_state_dict(weights, strict=True)``, or ``error`` naming ``source`` and every difference."""
    diff = state_dict_diff(module.state_dict(), weights, names)
    if diff:
        raise error(f"{source} does not fit {type(module).__name__}: {diff}")
    module.load_state_dict(dict(weights), strict=True)
    return module
