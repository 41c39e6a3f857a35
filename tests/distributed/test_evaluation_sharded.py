"""`callbacks.Evaluation` on two gloo processes (FSDP2-sharded sampling, split feature extraction, gathered metrics)
equals one process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import reference_cases
from tests.helpers import LAUNCHERS, ROOT


def _run_script(world_size: int, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(LAUNCHERS / "evaluation_sharded_run.py"), str(world_size), str(out),
           *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_two_gloo_processes_equal_one_process(tmp_path):
    cases = reference_cases("metrics", "precision_recall_identical")
    extra = [str(cases[0].with_suffix(".safetensors"))] if cases else []
    sharded = _run_script(2, tmp_path / "sharded.pt", *extra)
    single = _run_script(1, tmp_path / "single.pt")
    assert sharded["param_type"] == "DTensor"  # sampling really ran on FSDP2-sharded weights
    assert sharded["evaluation"].keys() == single["evaluation"].keys()
    for name, value in single["evaluation"].items():
        assert sharded["evaluation"][name] == pytest.approx(value, rel=1e-7, abs=1e-12), name
    assert sharded["logged"] == pytest.approx(single["logged"], rel=1e-6)
    if cases:  # the metrics themselves: half the features per rank, gathered, equal one in-process call
        from tests.distributed.launchers.evaluation_sharded_run import split_metrics

        whole = split_metrics(str(cases[0].with_suffix(".safetensors")), rank=0, world=1)
        for name, value in whole.items():
            assert sharded["split_metrics"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
