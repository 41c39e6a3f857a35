"""Reading official checkpoint files (training checkpoints, bare state dicts, safetensors) safely."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from speedrun_diffusion.lightning_modules.checkpoints.registry import CONFIG_FROM_FILE, import_official
from speedrun_diffusion.lightning_modules.weights import read_state_dict, safe_torch_load


def load_official_checkpoint(
    path: str | Path, kind: str, use_ema: bool = True, config: Mapping[str, Any] | None = None
) -> nn.Module:
    """Our network from an official file: a training checkpoint dict (``ema`` if ``use_ema`` else ``model``;
    for ``srdit.sit`` the config defaults to one derived from its ``args``), a bare state dict, or a
    ``.safetensors`` file. Loads with ``weights_only=True``; pass ``config`` when the file has no ``args``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official {kind} checkpoint {path} not found")
    if path.suffix == ".safetensors":
        obj: Any = read_state_dict(path, f"official {kind} checkpoint")
    else:  # argparse.Namespace allow-listed: official training checkpoints store their ``args``
        obj = safe_torch_load(path, allowed=[argparse.Namespace])
    state_dict = obj
    if isinstance(obj, dict):
        for key in (("ema", "model") if use_ema else ("model", "ema")) + ("state_dict",):
            if isinstance(obj.get(key), Mapping):
                state_dict = obj[key]
                break
    if config is None:
        derive = CONFIG_FROM_FILE.get(kind)
        config = derive(obj if isinstance(obj, dict) else {}) if derive is not None else None
        if config is None:
            raise ValueError(f"{path}: no config for {kind!r} can be derived from this file; pass config=")
    return import_official(kind, state_dict, config)
