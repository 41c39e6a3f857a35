"""The reference tier runs each test that evaluates a network twice: eager, and compiled as the recipes compile.

A test that takes the ``executed`` fixture passes each network it builds through ``executed(net)``: the eager run
gets the network back unchanged, the compiled run gets it compiled in place by the library's own
``compile_modules(compiled_parts(net), CompileConfig(enabled=True))`` — inductor, ``fallback_random``, a tokenizer by
its encoder and decoder, exactly what ``compile.enabled: true`` does in a recipe — and must then meet the same
official tolerances. The compiled run fails unless torch.compile really produced graphs for it.

Compiling costs 1–50 s per case on a 2-core CPU, so a plain run compiles each test function's first case only (the
other cases are configurations of the same code); ``SPEEDRUN_COMPILED_CASES=all`` compiles every case.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from speedrun_diffusion.lightning_modules.compilation import CompileConfig, compile_modules, compiled_parts

Executed = Callable[[nn.Module | None], nn.Module | None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the compiled runs after each test function's first (unless ``SPEEDRUN_COMPILED_CASES=all``)."""
    if os.environ.get("SPEEDRUN_COMPILED_CASES") == "all":
        return
    seen: set[tuple[str, str]] = set()
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("executed") != "compiled":
            kept.append(item)
            continue
        function = (str(item.path), item.originalname)
        (dropped if function in seen else kept).append(item)
        seen.add(function)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["eager", "compiled"])
def executed(request: pytest.FixtureRequest) -> Iterator[Executed]:
    """``executed(net) -> net``: unchanged (eager) or compiled in place as ``compile.enabled: true`` compiles
    (None passes through)."""
    if request.param == "eager":
        yield lambda module: module
        return
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # a fresh cache, so the graph count below is this test's
    counters.clear()
    compiled: list[nn.Module] = []

    def compile_(module: nn.Module | None) -> nn.Module | None:
        if module is None:
            return None
        compile_modules(compiled_parts(module), CompileConfig(enabled=True))
        compiled.append(module)
        return module

    yield compile_
    if compiled:  # (a test skipped before building its network compiled nothing)
        assert counters["stats"]["unique_graphs"] > 0, "torch.compile produced no graph: the compiled run ran eagerly"
