"""Keeping freed host memory (``lightning_modules/host_memory.py``, issue 23): after ``keep_freed_host_memory`` a
step that allocates and frees the same tensors again faults no page in (glibc hands freed blocks above its thresholds
back and faults them in again, the kernel zero-filling each page); the user's own malloc settings win; the CLI
applies it on CPU. Each measurement runs in a fresh interpreter: the setting is process-wide."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from speedrun_diffusion.lightning_modules import host_memory
from tests.helpers import CONFIGS

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                           reason="a glibc malloc setting")

# a step's worth of allocations (0.8-36 MB each; 81 MB in all), freed, five times: the minor page faults of each
# round. glibc's mmap and trim thresholds start at 128 KiB and then grow with what the process has freed, so how many
# pages its defaults fault in again varies with the process's history (from all of them to none by the fifth round
# of this toy); both sides fix them at their starting value first, so that without the setting every round faults
# every page in and the count shows only what ``keep_freed_host_memory`` (called after, overriding them) changes.
# Transparent huge pages are off for the process (prctl PR_SET_THP_DISABLE), so that a fault is one 4 KiB page.
ROUNDS = textwrap.dedent("""
    import ctypes, json, resource, sys, torch
    from speedrun_diffusion.lightning_modules.host_memory import keep_freed_host_memory
    libc = ctypes.CDLL("libc.so.6")
    assert libc.mallopt(-3, 128 * 1024) and libc.mallopt(-1, 128 * 1024)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE
    kept = keep_freed_host_memory() if sys.argv[1] == "keep" else False
    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensors = [torch.ones(n) for n in (3_000_000, 1_000_000, 9_000_000, 200_000, 7_000_000)]
        del tensors
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"kept": kept, "faults": [faults() for _ in range(5)]}))
""")
PAGES = 20_200_000 * 4 // 4096  # the pages one round touches


def _rounds(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_memory_is_reused_without_page_faults():
    default, kept = _rounds("default"), _rounds("keep")
    assert kept["kept"] is True
    assert max(kept["faults"][-2:]) < 0.01 * PAGES, kept  # the last rounds reuse what the first ones faulted in
    # without it glibc hands the freed blocks back and faults them in again (what the setting removes)
    assert min(default["faults"][1:]) > 0.9 * PAGES, default


@glibc
def test_the_users_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert host_memory.keep_freed_host_memory() is False  # returns before calling mallopt
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert host_memory.user_set_malloc()
    assert _rounds("keep", MALLOC_MMAP_THRESHOLD_="131072")["kept"] is False


def test_the_cli_keeps_freed_memory_on_cpu(monkeypatch):
    from speedrun_diffusion.lightning_modules import cli as cli_module

    calls = []
    monkeypatch.setattr(cli_module, "keep_freed_host_memory", lambda: calls.append(True) or True)
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])
    cli_module.build_cli(["-c", str(CONFIGS / "sid2" / "tiny_cpu.yaml")], run=False)
    assert calls == [True]
