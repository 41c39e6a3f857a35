"""The speed scripts of docs/benchmarks.md run end to end (no time is asserted: benchmarks measure, tests do not):
``benchmarks/gpu_check.py`` on the CPU at tiny sizes, one row per recipe; ``benchmarks/step_vs_commit.py --tiny``
against the commit before the house issue, so both layouts it drives stay importable; ``benchmarks/profile_step.py
--tiny`` splits a step and a sample call into its categories."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.helpers import ROOT

RECIPES = {"sit", "sid2", "srdit", "rae_stage1", "rae_stage2", "speeddiff"}


def run(*argv: str, timeout: int = 1200) -> list[dict] | dict:
    out = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gpu_check_runs_every_recipe_at_tiny_sizes_on_the_cpu():
    rows = run("benchmarks/gpu_check.py", "--tiny", "--compile", "off", "--steps", "2", "--warmup", "1", "--json")
    assert {r["recipe"] for r in rows} == RECIPES
    for r in rows:
        assert r["fused"] and r["batch"] > 0 and r["gflops_per_step"] > 0, r
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("step_s", "images_per_s", "mfu", "peak_memory_gib")), r


def test_step_vs_commit_drives_the_layout_before_the_house_issue():
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", "8b0cc2d^{commit}"],
                         capture_output=True, text=True)
    if rev.returncode:
        pytest.skip("not a git checkout with commit 8b0cc2d (e.g. an installed wheel or a shallow clone)")
    rows = run("benchmarks/step_vs_commit.py", "--baseline", "8b0cc2d", "--tiny", "--compile", "off", "--rows",
               "srdit_b1:2:bf16", "ditdh_s:2:fp32", "--rounds", "2", "--steps", "1", "--warmup", "1",
               "--sample-rounds", "1", "--sample-steps", "2", "--threads", "1", "--json")
    assert [(r["network"], r["batch"], r["precision"]) for r in rows] == [("srdit_b1", 2, "bf16"),
                                                                          ("ditdh_s", 2, "fp32")]
    for r in rows:
        assert r["step_time_ratio"] > 0 and r["sampling_speedup"] > 0 and r["step_gflops"] > 0
        assert "fused': True" in r["optimizer"]["tree"] and "fused': None" in r["optimizer"]["base"]


def test_profile_step_splits_a_step_and_a_sample_call_by_category():
    for what in ("step", "sample"):
        out = run("benchmarks/profile_step.py", "--tiny", "--compile", "off", "--what", what, "--warmup", "1",
                  "--calls", "1", "--sample-steps", "2", "--threads", "1", "--json")
        assert out["matmul_gflop"] > 0 and out["category_ms"]["matmul"] > 0, out
        assert (what == "step") == (out["category_ms"].get("AdamW", 0) > 0), out  # the optimizer only in the step
        assert out["wall_ms_matmuls_only"] < out["wall_ms"] and out["wall_ms_matmuls_at_peak"] < out["wall_ms"], out
