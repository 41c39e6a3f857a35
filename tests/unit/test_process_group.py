"""`leave_process_group`: the end-of-run exit from torch.distributed (the two-process launchers of the sharded
tests call it too, and assert their exit status)."""
from __future__ import annotations

import torch.distributed as dist

from speedrun_diffusion.lightning_modules.process_group import leave_process_group


def test_without_a_process_group_it_does_nothing():
    assert not dist.is_initialized()
    assert leave_process_group() is False
    assert not dist.is_initialized()


def test_a_gloo_group_is_destroyed(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        assert leave_process_group() is True
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
