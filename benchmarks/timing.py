"""Timing shared by the scripts in ``benchmarks/``: the median wall time of a callable, the machine's matmul
peak, one training-step row (time, model FLOPs, achieved fraction of the peak, max RSS), a recipe's training
step, a row timed in its own process, and the command-line plumbing of the per-precision step scripts."""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def matmul_peak_tflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` throughput of an n×n×n matmul: the machine's practical peak for ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def max_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_step(step: Callable[[], object], steps: int, warmup: int, precision: str) -> dict:
    """One row: ``step``'s FLOPs (counted on a first call), its median time over ``steps`` calls after
    ``warmup``, the achieved TFLOP/s and its fraction of the matmul peak for ``precision`` ("fp32" / "bf16")."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    seconds = median_seconds(step, steps, warmup)
    flops = counter.get_total_flops()
    peak = matmul_peak_tflops(torch.bfloat16 if precision == "bf16" else torch.float32)
    tflops = flops / seconds / 1e12
    return {"precision": precision, "ms": 1e3 * seconds, "gflops": flops / 1e9, "tflops": tflops,
            "peak_tflops": peak, "peak_fraction": tflops / peak, "max_rss_mb": max_rss_mb()}


def recipe_training_step(module: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer,
                         precision: str) -> Callable[[], None]:
    """One optimisation step of a recipe on ``batch``: ``module.compute_losses(batch)["loss"]`` (under CPU bf16
    autocast when ``precision`` is "bf16"), backward, ``optimizer.step()``, gradients cleared."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        with autocast:
            loss = module.compute_losses(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def row_in_subprocess(script: str, argv: list[str]) -> dict:
    """Run ``python script *argv`` in a fresh process (so its max RSS is that row's alone) and return the JSON row
    it prints last."""
    out = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_step_arguments(parser: argparse.ArgumentParser, steps: int, warmup: int) -> None:
    """``--steps`` / ``--warmup`` (timed and untimed steps) and the internal one-row ``--precision`` switch."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="one row only (internal)")


def rows_by_precision(args: argparse.Namespace, script: str, argv: list[str],
                      run_one: Callable[[argparse.Namespace], dict]) -> list[dict] | None:
    """In the child (``--precision`` given): print ``run_one(args)`` as the JSON row and return None. In the parent:
    the fp32 and bf16 rows, each timed by ``script *argv --precision P`` in its own process."""
    if args.precision:
        print(json.dumps(run_one(args)))
        return None
    return [row_in_subprocess(script, [*argv, "--precision", precision]) for precision in ("fp32", "bf16")]
