"""Launched by test_ddp_recipes.py: ``python ddp_recipe_run.py OUT CONFIG [CLI overrides]``.

Trains CONFIG (a tiny CPU config) for a few steps with DDP on 2 gloo processes, through the project's CLI with the
strategy of configs/scale/ddp_8gpu.yaml (find_unused_parameters false), fp32, deterministic; then resumes from the
step-2 checkpoint to the same end. Rank 0 saves every rank's trained parameters, step and GAN phase of both runs to
OUT. No tests here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from speedrun_diffusion.lightning_modules.cli import build_cli  # noqa: E402
from speedrun_diffusion.lightning_modules.compilation import is_compiled  # noqa: E402
from speedrun_diffusion.lightning_modules.process_group import leave_process_group  # noqa: E402


def gathered_state(cli) -> list:
    """Every rank's trained parameters, step, GAN phase and whether any network runs compiled (collective)."""
    module = cli.model
    state = {k: v.detach().clone() for k, v in module.named_parameters() if v.requires_grad}
    out = [None] * 2
    torch.distributed.all_gather_object(out, {"params": state, "step": cli.trainer.global_step,
                                              "phase": [bool(v) for v in vars(module.gan_phase).values()],
                                              "compiled": any(is_compiled(m) for m in module.modules())})
    return out


def main(out: str, config: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    config = str(ROOT / config)
    os.chdir(Path(out).parent)  # the config's relative run directories land beside OUT
    args = ["fit", "--config", config, "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true",
            "--trainer.strategy=lightning.pytorch.strategies.DDPStrategy",
            "--trainer.strategy.init_args.find_unused_parameters=false", "--trainer.deterministic=true",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *overrides]
    uninterrupted = gathered_state(build_cli(args))
    # the config's checkpoint callback wrote step=2.ckpt: resume from it in the same processes, to the same end
    resumed = gathered_state(build_cli([*args, "--ckpt_path", str(Path("ckpt") / "step=2.ckpt")]))
    if torch.distributed.get_rank() == 0:
        torch.save({"uninterrupted": uninterrupted, "resumed": resumed}, out)
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
