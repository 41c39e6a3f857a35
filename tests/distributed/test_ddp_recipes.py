"""The manual-optimisation GAN recipes under DDP on 2 gloo CPU processes (configs/scale/ddp_8gpu.yaml's strategy,
``find_unused_parameters: false``): RAE stage 1 (which refuses FSDP2 and is scaled with DDP) and SpeedDiff train
through the GAN warm-up — discriminator from step 1, adversarial term from step 2, so the discriminator's parameters
are unused in some backward passes —, both replicas end with identical weights, and a run resumed from the step-2
checkpoint ends with exactly the uninterrupted run's weights. (Equality with one process on the global batch does
not hold for RAE stage 1 by design: like the official DDP code, each rank computes the adaptive GAN weight from its
own batch's gradients.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import LAUNCHERS, ROOT

COMMON = ["--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--data.init_args.train_size=32",
          "--data.init_args.val_size=8", "--data.init_args.batch_size=4"]
RECIPES = {
    "rae_stage1": ("configs/rae/tiny_cpu_stage1.yaml", []),
    "speeddiff": ("configs/speeddiff/tiny_cpu.yaml", ["--model.init_args.depth=2", "--model.init_args.repa_depth=1"]),
}
# compile group on (inductor, the whole denoiser / decoder and the frozen encoders; DDP splits the graphs at its
# buckets); fused AdamW is the default kernel of every run here
COMPILED = {f"{name}_compiled": (config, [*overrides, "--model.init_args.compile.enabled=true"])
            for name, (config, overrides) in RECIPES.items()}


def with_warmup(config: str, tmp_path: Path) -> Path:
    """A copy of ``config`` whose GANWarmup switches the discriminator on at step 1 and the adversarial term at 2."""
    data = yaml.safe_load((ROOT / config).read_text())
    warmup = next(c for c in data["trainer"]["callbacks"] if c["class_path"].endswith("GANWarmup"))
    warmup["init_args"].update(lpips_start=0, disc_start=1, adversarial_start=2, unit="step")
    saver = next(c for c in data["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))
    saver["init_args"].update(dirpath="ckpt", filename="{step}", every_n_train_steps=2, save_top_k=-1, save_last=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("name", sorted(RECIPES) + sorted(COMPILED))
def test_ddp_replicas_stay_identical_through_the_gan_warmup(name, tmp_path):
    config, overrides = {**RECIPES, **COMPILED}[name]
    out = tmp_path / "out.pt"
    cmd = [sys.executable, str(LAUNCHERS / "ddp_recipe_run.py"), str(out), str(with_warmup(config, tmp_path)),
           *COMMON, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900 if name in COMPILED else 300)
    assert proc.returncode == 0 and out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = torch.load(out, weights_only=True)
    for ranks in (runs["uninterrupted"], runs["resumed"]):
        assert [r["step"] for r in ranks] == [3, 3] and all(r["phase"] == [True, True, True] for r in ranks)
        assert [r["compiled"] for r in ranks] == [name in COMPILED] * 2
        first, second = ranks[0]["params"], ranks[1]["params"]
        assert first.keys() == second.keys() and any(k.startswith("discriminator.") for k in first)
        for key in first:  # the replicas stay identical
            assert torch.equal(first[key], second[key]), key
    # resumed from the step-2 checkpoint (GAN phase, both optimizers, loader position, every rank's random stream)
    # = the uninterrupted run, bit for bit
    for key, value in runs["uninterrupted"][0]["params"].items():
        assert torch.equal(runs["resumed"][0]["params"][key], value), key
