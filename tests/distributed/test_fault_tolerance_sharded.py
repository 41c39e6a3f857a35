"""Fault tolerance under FSDP2 on 2 gloo processes: a NaN on one rank makes every rank skip the same step (no
hang, no divergence), and the resumable loader deals each epoch's samples disjointly over the ranks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers import LAUNCHERS, ROOT


def _run(world_size: int, out: Path) -> dict:
    cmd = [sys.executable, str(LAUNCHERS / "fault_tolerance_sharded_run.py"), str(world_size), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_nan_on_one_rank_skips_the_step_on_every_rank_and_data_is_split(tmp_path):
    sharded = _run(2, tmp_path / "sharded.pt")
    assert sharded["param_type"] == "DTensor"
    traj = sharded["trajectory"]
    assert len(traj) == 5 and sharded["nonfinite_steps"] == 1
    for name in traj[0]:
        assert torch.equal(traj[3][name], traj[2][name]), name  # step 2 skipped everywhere
        assert not torch.equal(traj[4][name], traj[3][name]), name
    # every step the two ranks see disjoint halves of the epoch's permutation (16 samples, 8 per step)
    rank0, rank1 = sharded["seen"]
    assert len(rank0) == len(rank1) == 4
    for step in range(4):
        assert not set(rank0[step]) & set(rank1[step])
    for epoch in (0, 1):
        both = [i for step in (2 * epoch, 2 * epoch + 1) for i in rank0[step] + rank1[step]]
        assert sorted(both) == list(range(16))
