"""Serving a trained recipe: a ready-to-sample model from a training checkpoint or from a self-contained bundle.

    model = load_pretrained("runs/sit_tiny_cpu/checkpoints/last.ckpt")   # the EMA weights, eval mode
    images = model.sample(torch.arange(10), num_steps=50, guidance_scale=1.5)
    save_pretrained(model, "bundles/sit_tiny")                             # recipe.json + weights.safetensors
    model = load_pretrained("bundles/sit_tiny")                            # no training files needed

A training checkpoint carries the recipe's class and hyper-parameters, so it alone rebuilds the model: the network
gets ``callbacks.EMA``'s shadow (the weights the papers sample with) unless ``use_ema=False``; the modules only
training needs (LPIPS, discriminators, REPA targets, weight files named by arguments) are not built. A sharded
(distributed) checkpoint folder is read whole. RAE stage 2 keeps its frozen tokenizer out of its checkpoints, so
its stage-1 checkpoint (or the official decoder files) must still exist — or pass ``tokenizer=``; a bundle holds it.

A bundle is a folder with ``recipe.json`` (format, the recipe's class, its hyper-parameters with the tokenizer's
architecture, whether the weights are the EMA's, the training step) and ``weights.safetensors`` (every tensor
sampling needs: network and tokenizer). Only ``DiffusionRecipe`` classes of this library are built from a file.
"""
from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speedrun_diffusion.lightning_modules.argument_groups import plain
from speedrun_diffusion.lightning_modules.recipe import DiffusionRecipe
from speedrun_diffusion.lightning_modules.weights import (
    CheckpointMismatchError,
    load_exact,
    network_weights,
    read_state_dict,
    read_training_checkpoint,
    recipe_of,
)

__all__ = ["BUNDLE_FORMAT", "load_pretrained", "recipe_class", "save_pretrained"]

BUNDLE_FORMAT = "speedrun-diffusion-bundle/1"
_LIGHTNING_KEYS = ("_class_path", "_instantiator")  # LightningCLI's entries in hyper-parameters


def recipe_class(name: str | None, source: Any) -> type[DiffusionRecipe]:
    """The recipe class a checkpoint or bundle names — only a ``DiffusionRecipe`` of ``speedrun_diffusion``
    (a file never chooses which code runs beyond that)."""
    if not name or not str(name).startswith("speedrun_diffusion."):
        raise ValueError(f"{source} names recipe {name!r}: not a recipe of speedrun_diffusion")
    module, _, attr = str(name).rpartition(".")
    cls = getattr(importlib.import_module(module), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, DiffusionRecipe)):
        raise ValueError(f"{source} names {name}, which is not a speedrun_diffusion recipe (DiffusionRecipe)")
    return cls


def load_pretrained(path: str | os.PathLike[str], use_ema: bool = True, map_location: Any = "cpu",
                    **overrides: Any) -> DiffusionRecipe:
    """A ready-to-sample recipe (eval mode, on ``map_location``) from a training checkpoint file, a sharded
    checkpoint folder or a bundle folder. ``use_ema``: the network gets the EMA shadow when the run had one (else
    its raw weights; ``model.uses_ema`` says which). ``overrides`` replace hyper-parameters (e.g. ``tokenizer=`` for
    a latent recipe whose tokenizer is not stored)."""
    path = Path(path)
    if (path / "recipe.json").is_file():
        return _load_bundle(path, map_location, overrides)
    checkpoint = read_training_checkpoint(path)
    cls = recipe_class(recipe_of(checkpoint), f"checkpoint {path}")
    hparams = {**(checkpoint.get("hyper_parameters") or {}), **overrides}
    state = checkpoint.get("state_dict") or {}
    if isinstance(hparams.get("tokenizer"), Mapping) and not any(k.startswith("tokenizer.") for k in state):
        raise CheckpointMismatchError(
            f"checkpoint {path} describes a tokenizer but holds none of its weights ({cls.__name__} keeps a frozen "
            "tokenizer out of its checkpoints): pass tokenizer= (the trained module)")
    model = cls.from_hparams(hparams)
    model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=False)
    weights, used_ema = network_weights(checkpoint, "net.", use_ema, source=f"checkpoint {path}")
    load_exact(model.net, weights, f"checkpoint {path}")
    _check_complete(model, state, f"checkpoint {path}")
    model.uses_ema = used_ema
    model.trained_steps = int(checkpoint.get("global_step", 0))
    return model.to(map_location).eval()


def _check_complete(model: DiffusionRecipe, state: Mapping[str, Tensor], source: str) -> None:
    """Every tensor of the trained parts sampling uses (the network, a tokenizer the recipe trains or stores) must
    have come from the file: a missing one would leave random weights behind without a word."""
    stored = [p for p in ("net.", "tokenizer.") if any(k.startswith(p) for k in state)]
    if "tokenizer." in stored and getattr(model, "tokenizer", None) is None:
        raise CheckpointMismatchError(f"{source} stores tokenizer weights, but its hyper-parameters build no "
                                      "tokenizer: pass tokenizer= (the module the recipe was trained with)")
    missing = sorted(k for k in model.state_dict() if k.startswith(tuple(stored)) and k not in state)
    if missing:
        raise CheckpointMismatchError(f"{source} lacks {len(missing)} tensors of {type(model).__name__}: {missing[:4]}")


def save_pretrained(model: DiffusionRecipe, directory: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a bundle (``recipe.json`` + ``weights.safetensors``) into ``directory``: the weights it
    holds now (after ``load_pretrained``: the EMA's), its hyper-parameters with the tokenizer's architecture, so
    ``load_pretrained(directory)`` samples the same images for the same noise without any training file."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hparams = {k: v for k, v in dict(model.hparams).items() if k not in _LIGHTNING_KEYS}
    hparams.update(model.bundle_hparams())
    record = {"format": BUNDLE_FORMAT, "recipe": model.recipe_name(), "hyper_parameters": plain(hparams),
              "ema": bool(getattr(model, "uses_ema", False)), "trained_steps": int(getattr(model, "trained_steps", 0))}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    for name in ("weights.safetensors", "recipe.json"):  # written beside, then renamed: never half a bundle
        (directory / f".{name}.tmp").unlink(missing_ok=True)
    save_file(state, str(directory / ".weights.safetensors.tmp"))
    (directory / ".recipe.json.tmp").write_text(json.dumps(record, indent=2, default=_json_default))
    os.replace(directory / ".weights.safetensors.tmp", directory / "weights.safetensors")
    os.replace(directory / ".recipe.json.tmp", directory / "recipe.json")
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"bundle hyper-parameter of type {type(value).__name__} is not JSON")


def _load_bundle(directory: Path, map_location: Any, overrides: Mapping[str, Any]) -> DiffusionRecipe:
    record = json.loads((directory / "recipe.json").read_text())
    if record.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{directory}/recipe.json has format {record.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    cls = recipe_class(record.get("recipe"), f"bundle {directory}")
    model = cls.from_hparams({**record["hyper_parameters"], **overrides})
    weights = read_state_dict(directory / "weights.safetensors", f"bundle {directory} weights")
    model.prepare_for_weights(weights)
    load_exact(model, {k: v for k, v in weights.items() if k in model.state_dict()}, f"bundle {directory}")
    model.uses_ema = bool(record.get("ema"))
    model.trained_steps = int(record.get("trained_steps", 0))
    return model.to(map_location).eval()
