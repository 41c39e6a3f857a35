"""Leaving ``torch.distributed`` together at the end of a multi-process run.

Lightning destroys the default process group at exit only for NCCL (an ``atexit`` hook). A gloo group
(CPU runs, e.g. ``ModelParallelStrategy`` with two processes) lives on into interpreter shutdown, where its
threads can be torn down while another rank still talks to it: the process then aborts ("terminate called
without an active exception", exit status −6) after a run that finished. :func:`leave_process_group` on
every rank meets the others at a barrier, then destroys the group, so the exit status is the run's.
"""
from __future__ import annotations

import torch.distributed as dist

__all__ = ["leave_process_group"]


def leave_process_group() -> bool:
    """Barrier, then destroy the default process group; True if there was one (a no-op otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()
    return True
