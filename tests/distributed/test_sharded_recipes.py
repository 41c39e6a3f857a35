"""Every recipe's tiny configuration under FSDP2 (ModelParallelStrategy) on 2 gloo CPU processes.

One launch of tests/sharded_recipes_run.py per recipe (fp32, deterministic) checks:
(a) the first steps' losses and the weights after them equal single-process training on the same global batch
    (each half batch drawing the noise its rank draws), within float tolerance;
(b) with EMA and (GAN recipes) GANWarmup switching terms on during the run, and SpeedDiff's discriminator step and
    LeCam anchors (averaged over ranks, so every rank holds the single-process values); autoguided sampling on the
    sharded weights with a replicated guide equals the single process's;
(c) a sharded (distributed checkpoint) save at step k, resumed in new processes, reproduces steps k+1… of the
    uninterrupted run exactly: losses, batches (data-loader position), weights (optimizer state; SpeedDiff: also
    VAE, discriminator and LeCam), EMA, GAN phase, and each rank's random stream.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import LAUNCHERS, ROOT

# tiny configs shrunk further (and without LR warm-up, so the first steps move the weights); a new recipe adds
# its configs/<recipe>/tiny_cpu.yaml here (a manual-optimisation recipe other than SpeedDiff also needs its own
# single-process emulation in sharded_recipes_run.EmulateRanks)
SMALL_DATA = ["--data.init_args.train_size=64", "--data.init_args.val_size=8", "--model.init_args.optimizer.warmup_steps=0"]
RECIPES = {
    "sit": ("configs/sit/tiny_cpu.yaml", ["--model.init_args.depth=2", "--model.init_args.hidden_size=64",
                                          "--model.init_args.num_heads=2"]),
    # SiD2's Adam ε = 1e-12 turns float rounding in the near-zero gradients of identity-initialised biases into
    # lr-sized steps (they differ by kernel batch split, not by sharding); ε = 1e-6 keeps the comparison on the math
    "sid2": ("configs/sid2/tiny_cpu.yaml", ["--model.init_args.channels=[32,64,64]",
                                            "--model.init_args.optimizer.eps=1e-6"]),
    # SPRINT needs a sparse block between the 2 dense encoder and 2 dense decoder blocks: depth 5; path drop
    # (one decision per global batch, broadcast from rank 0) made frequent so the first steps include one
    "srdit": ("configs/srdit/tiny_cpu.yaml", ["--model.init_args.depth=5", "--model.init_args.hidden_size=64",
                                              "--model.init_args.num_heads=1", "--model.init_args.projector_dim=64",
                                              "--model.init_args.path_drop_prob=0.5"]),
    # manual optimisation (joint step + discriminator step with LeCam) and GANWarmup switching across the resume point
    "speeddiff": ("configs/speeddiff/tiny_cpu.yaml", [
        "--model.init_args.vae_overrides={patch_size: 4, hidden_size: 32, encoder_depth: 1, decoder_depth: 1, "
        "num_heads: 2, latent_channels: 8, swiglu_multiple_of: 32}", "--model.init_args.depth=2",
        "--model.init_args.hidden_size=32", "--model.init_args.repa_depth=1", "--model.init_args.adapter_dim=32"]),
    # DiT^DH (DDT head blocks are FSDP units) on the cached latents of a 2-step tiny stage 1 (made by the runner)
    "rae_stage2": ("configs/rae/tiny_cpu_stage2.yaml", [
        "--model.init_args.depth=2", "--model.init_args.hidden_size=32", "--model.init_args.head_depth=1",
        "--model.init_args.head_hidden_size=32", "--model.init_args.optimizer.schedule=constant",
        "--model.init_args.optimizer.warmup_steps=0"]),
}
# the same runs with the compile group on (inductor; FSDP2: each block compiled before its fully_shard, the single
# process: the whole denoiser) — fused AdamW is the default kernel of every run here
COMPILED = {f"{name}_compiled": (RECIPES[name][0], [*RECIPES[name][1], "--model.init_args.compile.enabled=true"])
            for name in ("sit", "srdit")}


def _run(name: str, tmp_path: Path) -> dict:
    config, overrides = {**RECIPES, **COMPILED}[name]
    out = tmp_path / "out.pt"
    small = [] if name == "rae_stage2" else SMALL_DATA  # its latent cache is already small
    cmd = [sys.executable, str(LAUNCHERS / "sharded_recipes_run.py"), str(out), config, *overrides, *small]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900 if name in COMPILED else 300)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("name", sorted(RECIPES) + sorted(COMPILED))
def test_two_processes_match_one_and_sharded_resume_is_exact(name, tmp_path):
    run = _run(name, tmp_path)
    ref, sharded, resumed = run["reference"], run["sharded"], run["resumed"]
    steps, k = len(ref["losses"][0]), len(ref["losses"][0]) - len(resumed["losses"][0])
    assert sharded["param_type"] == "DTensor" and resumed["param_type"] == "DTensor"  # really sharded
    assert run["checkpoint_is_directory"]  # a distributed checkpoint, not a gathered file
    assert ref["compiled"] == sharded["compiled"] == resumed["compiled"] == (name in COMPILED)

    # (a) 2 processes = 1 process on the same global batch: the global loss is the mean of the ranks' losses
    global_loss = torch.tensor(sharded["losses"]).mean(0)
    torch.testing.assert_close(global_loss, torch.tensor(ref["losses"][0]), rtol=1e-5, atol=1e-6)
    # the ranks trained on the interleaved halves of the single process's batches
    for step in range(steps):
        merged = [label for pair in zip(*(rank[step] for rank in sharded["labels"])) for label in pair]
        assert merged == ref["labels"][0][step]
    assert _max_diff(sharded["params"], ref["params"]) < 1e-5
    # (b) autoguided sampling on the sharded weights (replicated guide) = the single process's
    torch.testing.assert_close(sharded["guided"], ref["guided"], rtol=1e-4, atol=1e-4)
    assert sharded["guided"].abs().max() > 0  # a real image batch, not zeros

    # (c) resume from the sharded checkpoint at step k = the uninterrupted run's steps k+1…, bit for bit
    for rank in range(len(sharded["losses"])):
        assert resumed["losses"][rank] == sharded["losses"][rank][k:], f"rank {rank} losses"
        assert resumed["labels"][rank] == sharded["labels"][rank][k:], f"rank {rank} batches"
    assert _max_diff(resumed["params"], sharded["params"]) == 0.0  # incl. VAE, discriminator, LeCam anchors
    assert _max_diff(resumed["ema"], sharded["ema"]) == 0.0
    assert resumed["gan_phase"] == sharded["gan_phase"]  # GANWarmup state (all on at the end for SpeedDiff)

