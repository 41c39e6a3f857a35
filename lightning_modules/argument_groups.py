"""Typed argument groups of the recipes (``optimizer``, ``sharding``, ``nonfinite``, ``sampling``): coercion from
plain mappings and back.

A recipe declares each group once, with its paper defaults as the default instance::

    def __init__(self, ..., optimizer: OptimizerConfig = OptimizerConfig(betas=(0.9, 0.99), warmup_steps=10_000)):

LightningCLI builds the dataclass from YAML (a key left out keeps the recipe's default). A mapping passed from
Python or read back from a checkpoint's hyper-parameters replaces only the fields it names (:func:`as_group`).
Hyper-parameters are stored as plain containers (:func:`plain`; a polymorphic field such as the sampler as
``{class_path, init_args}``, as LightningCLI writes it), so checkpoints load with ``weights_only=True``; a module
argument (a tokenizer) is stored as the ``{class_path, init_args}`` that rebuilds it (:func:`module_architecture`).
"""
from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any, TypeVar

from torch import nn

__all__ = ["as_group", "declared_default", "module_architecture", "plain"]

G = TypeVar("G")


def declared_default(cls: type, name: str, group: type[G]) -> G:
    """The default instance of argument ``name`` in ``cls.__init__`` (the recipe's paper values), else ``group()``."""
    parameter = inspect.signature(cls.__init__).parameters.get(name)
    default = parameter.default if parameter is not None else None
    return default if isinstance(default, group) else group()


def as_group(value: Any, group: type[G], default: G | None = None) -> G:
    """``value`` as an instance of the dataclass ``group``: an instance as it is; None as ``default``; a mapping as
    ``default`` with the fields it names replaced (a ``{class_path, init_args}`` field value is instantiated,
    and must be an instance of the field's declared class). Unknown fields raise TypeError naming them."""
    base = default if default is not None else group()
    if value is None:
        return base
    if isinstance(value, group):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a {group.__name__} or a mapping of its fields, got {type(value).__name__}")
    known = {f.name for f in fields(group)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise TypeError(f"{group.__name__} has no field(s) {unknown}; its fields: {sorted(known)}")
    hints = typing.get_type_hints(group)
    return replace(base, **{k: _field_value(v, hints[k], f"{group.__name__}.{k}") for k, v in value.items()})


def _field_value(value: Any, hint: Any, where: str) -> Any:
    if isinstance(value, Mapping) and "class_path" in value:
        allowed = tuple(t for t in (typing.get_args(hint) or (hint,)) if isinstance(t, type))
        cls = _resolve_class(str(value["class_path"]), allowed, where)
        return cls(**dict(value.get("init_args") or {}))
    if isinstance(value, list):
        return tuple(_field_value(v, Any, where) for v in value)  # frozen groups hold tuples
    return value


def _resolve_class(class_path: str, allowed: tuple[type, ...], where: str) -> type:
    """The class a ``class_path`` names — dotted, or a short name among the subclasses of ``allowed`` (as
    LightningCLI resolves them) — refused unless it subclasses one of ``allowed``."""
    kinds = " or ".join(t.__name__ for t in allowed) or "class"
    if "." in class_path:
        module, _, name = class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name, None)
    else:
        found, stack = [], list(allowed)
        while stack:
            sub = stack.pop()
            found += [sub] if sub.__name__ == class_path else []
            stack += sub.__subclasses__()
        cls = found[0] if found else None
    if not (isinstance(cls, type) and allowed and issubclass(cls, allowed)):
        raise TypeError(f"{where}: {class_path} is not a known {kinds}")
    return cls


def plain(value: Any, top: bool = True) -> Any:
    """``value`` as plain containers: an argument group as a dict of its fields, an object inside one as
    ``{"class_path", "init_args"}``; anything else unchanged."""
    if is_dataclass(value) and not isinstance(value, type):
        body = {f.name: plain(getattr(value, f.name), top=False) for f in fields(value)}
        if top:
            return body
        cls = type(value)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": body}
    if isinstance(value, Mapping):
        return {k: plain(v, top=False) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v, top=False) for v in value)
    return value


def module_architecture(module: nn.Module) -> dict[str, Any]:
    """``{class_path, init_args}`` that rebuilds ``module`` with random weights: a module built from one config
    dataclass (``Cls(cfg)``: INVAE, ViT-VAE, the RAE encoder / decoder) or from such modules and plain values
    (``RAE``); LightningCLI's ``instantiate_module`` reads it back."""
    cls = type(module)
    path = f"{cls.__module__}.{cls.__qualname__}"
    cfg = getattr(module, "cfg", None)
    if is_dataclass(cfg):
        return {"class_path": path, "init_args": {"cfg": {f.name: plain(getattr(cfg, f.name), top=False)
                                                          for f in fields(cfg)}}}
    architecture = getattr(module, "architecture", None)
    if callable(architecture):
        return {"class_path": path, "init_args": {k: module_architecture(v) if isinstance(v, nn.Module) else v
                                                  for k, v in architecture().items()}}
    raise TypeError(f"{path} has neither a config dataclass `cfg` nor `architecture()`: pass it to load_pretrained")
