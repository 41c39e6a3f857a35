"""Shared test fixtures: deterministic CPU torch, the reference-vector directory, and the test tiers.

Tiers (one folder each, marked automatically; docs/testing.md):

* ``unit`` — one process, in memory, seconds: mirrors the packages (blocks, networks, diffusion, losses, datamodules,
  callbacks, recipes) plus the layering and safe-loading checks;
* ``reference`` — equivalence with the official code's vectors under ``$SPEEDRUN_REFERENCE_DIR``;
* ``distributed`` — two gloo processes (FSDP2 / DDP), started from ``distributed/launchers/``;
* ``e2e`` — the ``speedrun-diffusion`` command line end to end: configs, resumes, kills, bad input, the wheel.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("SPEEDRUN_REFERENCE_DIR",
                                    Path(__file__).resolve().parents[1] / ".." / "shared" / "reference")).resolve()
TIERS = ("unit", "reference", "distributed", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the tier of its folder (``pytest -m unit`` runs the fast tier)."""
    tests = Path(__file__).resolve().parent
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(tests).parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


def reference_cases(area: str, case: str) -> list[Path]:
    """Every JSON under ``$SPEEDRUN_REFERENCE_DIR/<area>/`` whose ``"case"`` field is ``case``.

    Globbing (not fixed names) picks up new configurations of a known case; an absent area gives [].
    """
    found = []
    for path in sorted((REFERENCE_DIR / area).glob("*.json")):
        try:
            if json.loads(path.read_text()).get("case") == case:
                found.append(path)
        except (json.JSONDecodeError, AttributeError):
            continue
    return found


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


def load_case(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON spec, tensors) of one reference case: ``CASE.json`` beside ``CASE.safetensors``."""
    from safetensors.torch import load_file

    return json.loads(path.read_text()), load_file(str(path.with_suffix(".safetensors")))


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` with the prefix stripped (e.g. ``param/feat_rope.`` → a state dict)."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
