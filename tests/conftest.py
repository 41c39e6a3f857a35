"""Shared test fixtures: deterministic CPU torch and the reference-vector directory."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("SPEEDRUN_REFERENCE_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "reference")).resolve()


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
