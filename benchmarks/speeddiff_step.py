"""SpeedDiff joint training step on this CPU: ms/step, GFLOPs/step, achieved TFLOP/s, % of matmul peak, memory.

One step = Algorithm 1's joint loss (ViT-VAE encode, Refined-DiT, one 2B decoder pass for x̂_vae and x̂_tpr,
LPIPS, PatchGAN generator term, KL, REPA++) forward + backward + AdamW, then the PatchGAN discriminator step
(hinge + LeCam) + AdamW — the networks of ``configs/speeddiff/tiny_cpu.yaml`` (tiny random LPIPS net and VFM),
fp32 and bf16 autocast, each in its own subprocess. FLOPs from torch.utils.flop_counter (2 per multiply-add,
forward + backward); peak = best of a few 2048³ matmuls of the same dtype. No official code exists to compare.

    python benchmarks/speeddiff_step.py [--batch 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tables import print_table  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    add_step_arguments, recipe_training_step, rows_by_precision, time_step,
)


def tiny_module():
    from speedrun_diffusion.lightning_modules.losses import LPIPS, ConvFeatures
    from speedrun_diffusion.lightning_modules.networks.discriminators import PatchGANDiscriminator
    from speedrun_diffusion.lightning_modules.networks.target_encoders import DINOv2Targets
    from speedrun_diffusion.lightning_modules.speeddiff import SpeedDiff

    return SpeedDiff(
        vae="B", resolution=32, vae_overrides=dict(patch_size=4, hidden_size=64, encoder_depth=2, decoder_depth=2,
                                                   num_heads=2, latent_channels=8, swiglu_multiple_of=32),
        depth=4, hidden_size=96, num_heads=2, num_classes=10, repa_pp=True, repa_depth=2, adapter_dim=128,
        lpips=LPIPS(ConvFeatures((8, 16, 32)), pretrained=False),
        discriminator=PatchGANDiscriminator(base_channels=16, num_layers=2),
        vfm=DINOv2Targets(random_weights=True, resolution=32,
                          model_kwargs=dict(patch_size=4, embed_dim=64, depth=2, num_heads=2)))


def run_one(args: argparse.Namespace) -> dict:
    from speedrun_diffusion.lightning_modules.losses.speeddiff_loss import speeddiff_discriminator_losses

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = tiny_module()
    disc = {id(p) for p in module.discriminator.parameters()}
    main_opt = torch.optim.AdamW([p for p in module.trainable_parameters() if id(p) not in disc], lr=1e-4)
    disc_opt = torch.optim.AdamW(module.discriminator.parameters(), lr=1e-4)
    batch = {"image": torch.rand(args.batch, 3, 32, 32) * 2 - 1, "label": torch.randint(0, 10, (args.batch,))}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    joint_step = recipe_training_step(module, batch, main_opt, args.precision)

    def work() -> None:
        joint_step()
        module.discriminator.zero_grad(set_to_none=True)  # the generator loss left gradients on D; main_opt skips it
        module.discriminator.train()
        with autocast:
            d = speeddiff_discriminator_losses(module.discriminator, batch["image"], module._reconstruction,
                                               module.lecam, module.weights.lecam)["d_loss"]
        d.backward()
        disc_opt.step()
        disc_opt.zero_grad(set_to_none=True)

    trained = sum(p.numel() for p in module.trainable_parameters())
    return {"params_m": trained / 1e6, **time_step(work, args.steps, args.warmup, args.precision)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for the timings and the matmul peak (1: robust on a shared machine)")
    add_step_arguments(parser, steps=5, warmup=1)
    args = parser.parse_args()
    rows = rows_by_precision(args, __file__, sys.argv[1:], run_one)
    if rows is None:
        return
    print(f"SpeedDiff tiny joint step (configs/speeddiff/tiny_cpu.yaml networks) on CPU: torch {torch.__version__}, "
          f"{args.threads} thread(s), batch {args.batch}, {rows[0]['params_m']:.2f} M trained parameters")
    header = ["precision", "ms/step", "GFLOPs/step", "TFLOP/s", "matmul peak TFLOP/s", "% of peak", "max RSS (MB)"]
    table = [[r["precision"], f"{r['ms']:.1f}", f"{r['gflops']:.2f}", f"{r['tflops']:.3f}", f"{r['peak_tflops']:.3f}",
              f"{100 * r['peak_fraction']:.1f}", f"{r['max_rss_mb']:.0f}"] for r in rows]
    print_table(header, table)


if __name__ == "__main__":
    main()
