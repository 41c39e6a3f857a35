"""Helpers shared by the SR-DiT reference tests: build our networks from a case via ``import_official``."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from speedrun_diffusion.lightning_modules.checkpoints import import_official
from tests.conftest import load_case, with_prefix


def load_srdit_case(path: Path, kind: str = "srdit.sit") -> tuple[dict, dict[str, torch.Tensor], nn.Module]:
    """(spec, tensors, our network with the case's official weights); SiT configs may sit under "sit"."""
    spec, tensors = load_case(path)
    config = spec["config"]
    if kind == "srdit.sit" and "sit" in config:
        config = config["sit"]
    net = import_official(kind, with_prefix(tensors, "param/"), config)
    return spec, tensors, net


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, spec: dict, name: str) -> None:
    """The case's elementwise rule |mine − ref| ≤ atol + rtol·|ref|."""
    tol = spec["tolerance"]
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol["atol"], rtol=tol["rtol"],
                               msg=lambda m: f"{name}: {m}")
