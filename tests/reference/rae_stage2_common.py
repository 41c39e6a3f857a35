"""Helpers shared by the RAE stage-2 reference tests: build networks from a case through ``import_official``,
per-key tolerances, and the official DiT^DH / LightningDiT kind of a case."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from speedrun_diffusion.lightning_modules.checkpoints import import_official
from tests.conftest import load_case, reference_cases, with_prefix

AREA = "rae_stage2"


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the vectors were generated; tiny ops only lose time to thread hand-offs."""
    torch.set_num_threads(1)
    yield


def cases(*names: str) -> list[Path]:
    """Every JSON of the area whose ``case`` is one of ``names`` (public and hidden sets alike)."""
    return [p for name in names for p in reference_cases(AREA, name)]


def kind_of(spec: dict) -> str:
    """``rae.ditdh`` for DDT.py cases (also the transport / sampler ones), ``rae.lightningdit`` otherwise."""
    source = spec["source"]
    is_lightning = "lightningDiT" in source["file"] or source["object"].startswith("LightningDiT")
    return "rae.lightningdit" if is_lightning else "rae.ditdh"


def load_rae_case(path: Path) -> tuple[dict, dict[str, torch.Tensor], nn.Module, nn.Module | None]:
    """(spec, tensors, network, guide network or None), both in eval mode with the case's official weights."""
    spec, tensors = load_case(path)
    kind = kind_of(spec)
    net = import_official(kind, with_prefix(tensors, "param/"), spec["config"]).eval()
    guide = None
    if "guide_config" in spec:
        guide = import_official(kind, with_prefix(tensors, "guide_param/"), spec["guide_config"]).eval()
    return spec, tensors, net, guide


def tolerance(spec: dict, key: str) -> tuple[float, float]:
    """(atol, rtol) of ``key``: its per-key entry, else the case level."""
    tol = spec["tolerance"]
    entry = tol.get("per_key", {}).get(key, tol)
    return entry["atol"], entry["rtol"]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, spec: dict, key: str) -> None:
    """|mine − ref| ≤ atol + rtol·|ref| with the key's tolerance; integer tensors must match exactly."""
    assert tuple(actual.shape) == tuple(expected.shape), f"{key}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    if not expected.is_floating_point():
        assert torch.equal(actual.to(expected.dtype), expected), key
        return
    atol, rtol = tolerance(spec, key)
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{key}: {m}")
