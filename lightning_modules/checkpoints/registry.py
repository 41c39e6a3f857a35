"""The registry behind ``import_official``: kinds, strict loading and the error it raises."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from speedrun_diffusion.lightning_modules.weights import CheckpointMismatchError, load_exact

Importer = Callable[[Mapping[str, Tensor], Mapping[str, Any]], nn.Module]
# official checkpoint file content (dict) -> constructor kwargs, for files that carry their config
ConfigFromFile = Callable[[Mapping[str, Any]], Mapping[str, Any] | None]
OFFICIAL_IMPORTERS: dict[str, Importer] = {}
CONFIG_FROM_FILE: dict[str, ConfigFromFile] = {}
# wrappers that DDP (module.) and torch.compile (_orig_mod.) put in front of every key
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class OfficialCheckpointError(CheckpointMismatchError):
    """An official state dict does not fit the network built from its config."""


def register_official(kind: str, config_from_file: ConfigFromFile | None = None) -> Callable[[Importer], Importer]:
    """Decorator: make ``fn(state_dict, config) -> nn.Module`` available as ``import_official(kind, …)``.

    ``config_from_file(file_dict)`` optionally derives the constructor kwargs from an official checkpoint
    file (e.g. its ``args``) so ``load_official_checkpoint`` works without an explicit config.
    """

    def decorate(fn: Importer) -> Importer:
        if kind in OFFICIAL_IMPORTERS:
            raise ValueError(f"official kind {kind!r} is already registered")
        OFFICIAL_IMPORTERS[kind] = fn
        if config_from_file is not None:
            CONFIG_FROM_FILE[kind] = config_from_file
        return fn

    return decorate


def import_official(kind: str, state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> nn.Module:
    """Our network for the official ``kind`` with the official weights (strict keys; see package doc)."""
    if kind not in OFFICIAL_IMPORTERS:
        raise KeyError(f"unknown official kind {kind!r}; known: {sorted(OFFICIAL_IMPORTERS)}")
    return OFFICIAL_IMPORTERS[kind](strip_wrapper_prefixes(state_dict), config)


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove a ``module.`` / ``_orig_mod.`` prefix shared by every key."""
    sd = dict(state_dict)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], renames: Mapping[str, str] | None = None) -> nn.Module:
    """Load ``state_dict`` (official keys, optionally renamed ``official → ours``) with strict matching.

    Raises ``OfficialCheckpointError`` naming every missing key, unexpected key and shape mismatch.
    """
    renames = renames or {}
    return load_exact(module, {renames.get(k, k): v for k, v in state_dict.items()}, "official state dict",
                      error=OfficialCheckpointError, names=("official", "ours"))
