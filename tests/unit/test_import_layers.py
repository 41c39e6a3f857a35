"""The library's layers only import downward (DESIGN "Layout"), with no cycle, read from the source (AST): every
``import`` statement counts, function-level ones included, so no cycle can hide behind an import inside a function.

    weights, process_group, host_memory → blocks, datamodules → networks, flops → diffusion → losses → checkpoints
    → recipes → callbacks → cli
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = ("lightning_modules", "callbacks", "datamodules")

# (module-name prefix, layer); the longest matching prefix decides. A module may import its own layer or below.
LAYERS: dict[str, int] = {
    "lightning_modules.weights": 0,
    "lightning_modules.process_group": 0,
    "lightning_modules.host_memory": 0,
    "lightning_modules.blocks": 1,
    "datamodules": 1,
    "lightning_modules.networks": 2,
    "lightning_modules.flops": 2,
    "lightning_modules.diffusion": 3,
    "lightning_modules.losses": 4,
    "lightning_modules.checkpoints": 5,
    "lightning_modules": 6,  # the recipes (recipe.py and its pieces, one module per recipe) and the package face
    "callbacks": 7,
    "lightning_modules.cli": 8,
    "lightning_modules.sample_command": 8,  # the `sample` subcommand: writes through callbacks' image protocol
}


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def library_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module → the library modules it imports (``speedrun_diffusion.`` stripped; relative imports resolved)."""
    modules = library_modules()

    def resolve(target: str) -> str | None:
        parts = target.removeprefix("speedrun_diffusion.").split(".")
        while parts:
            if ".".join(parts) in modules:
                return ".".join(parts)
            parts.pop()
        return None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets.update([base] + [f"{base}.{alias.name}" for alias in node.names])
        resolved = {resolve(t) for t in targets} - {None, name}
        # a module importing its own package's face (__init__) is how Python loads it, not an edge
        graph[name] = {t for t in resolved if not name.startswith(t + ".")}
    return graph


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                  for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the cycle it closes."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_library_module_imports_only_its_layer_or_below():
    graph = import_graph()
    assert len(graph) > 90  # the walk found the library
    assert not upward_edges(graph), "\n".join(upward_edges(graph))


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The two checks can fail: a network importing a recipe, and a recipe pair importing each other."""
    graph = {"lightning_modules.networks.dit": {"lightning_modules.sit"}, "lightning_modules.sit": set()}
    assert upward_edges(graph) == ["lightning_modules.networks.dit (layer 2) imports lightning_modules.sit (layer 6)"]
    graph = {"lightning_modules.srdit": {"lightning_modules.latent_encoder"},
             "lightning_modules.latent_encoder": {"lightning_modules.srdit"}}
    assert cycles(graph) == [["lightning_modules.latent_encoder", "lightning_modules.srdit",
                              "lightning_modules.latent_encoder"]]
    assert not upward_edges(graph)  # same layer: only the cycle check sees it
