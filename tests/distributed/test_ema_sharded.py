"""`callbacks.EMA` under FSDP2 on two gloo processes: each rank averages its own shard, and the gathered EMA equals
the analytic average of the trajectory and the single-process run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import LAUNCHERS, ROOT
from tests.helpers.toy_recipe import analytic_ema


def _assert_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=atol, rtol=1e-5, msg=k)


def _run_script(world_size: int, out: Path) -> dict:
    cmd = [sys.executable, str(LAUNCHERS / "ema_sharded_run.py"), str(world_size), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_ema_under_fsdp2_two_processes_equals_analytic_and_single_process(tmp_path):
    sharded = _run_script(2, tmp_path / "sharded.pt")
    single = _run_script(1, tmp_path / "single.pt")
    assert sharded["param_type"] == "DTensor"  # the EMA really ran on sharded parameters
    _assert_close(sharded["ema"], analytic_ema(sharded["trajectory"], 0.8), atol=1e-6)
    _assert_close(sharded["ema"], single["ema"], atol=1e-5)
