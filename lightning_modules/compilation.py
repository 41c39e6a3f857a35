"""``torch.compile`` of a recipe's networks, as one typed argument group (``compile``).

    compile:                        # model.init_args.compile in YAML
      enabled: true                 # on in the paper-size GPU configs; off by default (tiny CPU configs: below)
      mode: null                    # torch.compile's mode: null (default), max-autotune, reduce-overhead, ...
      frozen: true                  # the frozen tokenizers, target encoders and LPIPS too

``DiffusionRecipe.configure_model`` (Lightning calls it at the start of fit / validate / test / predict; call it
yourself in a plain training loop) compiles in place with ``nn.Module.compile``, so parameter names, state dicts
and checkpoints are those of the eager module:

* on one device and under DDP, the whole denoiser (``recipe.compiled_modules()``);
* under FSDP2, each shard unit (transformer block, ResBlock) before its ``fully_shard``, the usual FSDP2 pattern:
  the per-unit graphs leave FSDP's all-gather / reduce-scatter hooks between them;
* with ``frozen``, every frozen module too; a tokenizer is compiled by its ``encoder`` and ``decoder``, the parts
  its ``encode`` / ``decode`` call (the methods themselves are not ``forward``).

Sampling calls the same compiled modules (in eval mode and without gradients torch.compile traces one more
graph). The training forward of every recipe has no graph break (``tests/unit/recipes/test_compilation.py``
counts them on tiny models), and the compiled networks meet the official reference vectors as the eager ones do
(``tests/reference``, docs/testing.md). Whether compiling pays for itself is a matter of run length: on the
2-core CPU of docs/benchmarks.md the first steps take minutes to compile, so the tiny CPU configs leave it off.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from torch import nn

__all__ = ["CompileConfig", "CompileMode", "compile_module", "compile_modules", "compiled_parts", "is_compiled"]

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileConfig:
    """A recipe's ``compile`` argument group.

    Args:
        enabled: compile the networks in ``configure_model`` (False: eager).
        mode: ``torch.compile``'s mode (None: its default). "reduce-overhead" uses CUDA graphs.
        dynamic: ``torch.compile``'s ``dynamic`` (None: its default, dynamic shapes once a second shape is seen —
            sampling's batch of conditional + unconditional rows differs from training's).
        fullgraph: refuse graph breaks (``torch.compile(fullgraph=True)``) instead of splitting the graph there.
        frozen: also compile the frozen modules (tokenizers by their encoder and decoder, target encoders, LPIPS).
        backend: ``torch.compile``'s backend ("inductor"; "aot_eager" or "eager" trace without generating code,
            e.g. to look for graph breaks quickly).
    """

    enabled: bool = False
    mode: CompileMode | None = None
    dynamic: bool | None = None
    fullgraph: bool = False
    frozen: bool = True
    backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"compile.mode must be null or one of {list(MODES)}, got {self.mode!r}")


def is_compiled(module: nn.Module) -> bool:
    """True once ``nn.Module.compile`` has wrapped ``module``'s call."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_module(module: nn.Module, cfg: CompileConfig) -> nn.Module:
    """``module.compile(...)`` with ``cfg``'s options, in place (names and state dict unchanged); a module that is
    already compiled is left as it is, so ``configure_model`` may run again (validate after fit).

    Under inductor, random ops inside the graph (label dropout, SPRINT's token routing and path drop) draw from
    torch's generator as in eager mode (``fallback_random``), so a seed gives the same training run compiled or not;
    inductor's own generator would draw other numbers."""
    if is_compiled(module):
        return module
    if cfg.backend == "inductor":
        from torch._inductor import list_mode_options

        options = {**list_mode_options(cfg.mode or "default", cfg.dynamic), "fallback_random": True}
        module.compile(backend="inductor", dynamic=cfg.dynamic, fullgraph=cfg.fullgraph, options=options)
    else:
        module.compile(backend=cfg.backend, dynamic=cfg.dynamic, fullgraph=cfg.fullgraph)
    return module


def compiled_parts(module: nn.Module) -> list[nn.Module]:
    """The submodules that compiling ``module`` means: a tokenizer's ``encoder`` and ``decoder`` (what its
    ``encode`` / ``decode`` methods call through ``__call__``), any other module whole."""
    parts = [getattr(module, name, None) for name in ("encoder", "decoder")]
    parts = [p for p in parts if isinstance(p, nn.Module)]
    has_methods = callable(getattr(module, "encode", None)) and callable(getattr(module, "decode", None))
    return parts if parts and has_methods else [module]


def compile_modules(modules: Iterable[nn.Module], cfg: CompileConfig) -> None:
    """``compile_module`` on each of ``modules`` (each at most once), when ``cfg.enabled``."""
    if not cfg.enabled:
        return
    seen: set[int] = set()
    for module in modules:
        if id(module) not in seen:
            seen.add(id(module))
            compile_module(module, cfg)
