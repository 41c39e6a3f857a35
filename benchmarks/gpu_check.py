"""Each recipe's paper-size network trained for a few dozen steps on one CUDA GPU, beside the papers' throughput.

    python benchmarks/gpu_check.py                       # every recipe (H100 / H200 class: under 8 minutes)
    python benchmarks/gpu_check.py --recipes srdit speeddiff --steps 40 --json
    python benchmarks/gpu_check.py --tiny                # tiny sizes (what it does on a CPU; tests run this)

Every recipe trains as its configs train it — a Lightning ``Trainer`` with ``precision: bf16-mixed``, the recipe's
fused AdamW (``optimizer.implementation: auto``), ``compile: {enabled: true}`` (as the paper GPU configs set it),
gradient clipping at 1.0 (the GAN recipes: ``optimizer.grad_clip``), the ``EMA`` callback — on synthetic batches
already on the device, at the paper's per-GPU batch. Random weights everywhere (no download): the DINOv2 target
encoders, the RAE encoder, LPIPS's VGG16 and the discriminators' backbones are the papers' architectures untrained,
which changes nothing in the work done.

Printed per recipe: the median step time over the last ``--steps`` steps (after ``--warmup`` steps, which include
compiling), images/s, the model FLOPs of one step (``torch.utils.flop_counter`` on an eager batch-1 step × the
batch: forward + backward of every network the step runs), MFU = FLOPs/s ÷ the device's dense bf16 peak (a table of
datasheet values; other devices: the best large bf16 matmul measured here), peak memory, and the paper's figure:

* SR-DiT-B/1: 400K steps in 10 h on 8×H200 at global batch 256, i.e. ≥ 11.1 steps/s at 32 images per GPU;
* SpeedDiff-XL: 0.31 s/step on 16×H100 at global batch 256 (16 per GPU), i.e. 3.2 steps/s.

A step on one GPU has no gradient all-reduce, so it bounds the papers' multi-GPU step time from below. Without a
CUDA device the script runs the tiny sizes on the CPU (2 threads).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import print_table  # noqa: E402 - benchmarks/tables.py

# dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' datasheets, by device-name substring
DENSE_BF16_PEAK = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4,
                   "GH200": 989.4, "B200": 2250.0, "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0}


@dataclass
class Case:
    """One recipe at one size: the module, a batch on the device, its per-GPU batch size, EMA decay, paper figure."""

    name: str
    build: Callable[[bool], torch.nn.Module]
    batch: Callable[[int, bool, torch.device], dict[str, torch.Tensor]]
    paper_batch: int
    tiny_batch: int
    ema_decay: float
    paper: str = "—"
    paper_steps_per_s: float | None = None


def _labels(n: int, classes: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device) % classes


def _compile(args_compile: bool) -> dict[str, Any]:
    return {"compile": {"enabled": args_compile}}


def _tiny_dinov2(resolution: int):
    from speedrun_diffusion.lightning_modules.networks.target_encoders import DINOv2Targets

    return DINOv2Targets(random_weights=True, resolution=resolution,
                         model_kwargs=dict(patch_size=4, embed_dim=32, depth=1, num_heads=2))


def cases(compile_on: bool) -> dict[str, Case]:
    """The six recipes at the papers' sizes (or tiny): SR-DiT Table 1 / RAE App. F / SpeedDiff Tab. 14 / SiD2 A.4."""
    from speedrun_diffusion.lightning_modules import RAEStage1, RAEStage2, SiD2, SiT, SpeedDiff, SRDiT
    from speedrun_diffusion.lightning_modules.losses.lpips import LPIPS, ConvFeatures
    from speedrun_diffusion.lightning_modules.networks.discriminators import DinoDiscriminator, PatchGANDiscriminator
    from speedrun_diffusion.lightning_modules.networks.target_encoders import DINOv2Targets

    c = _compile(compile_on)

    def sit(tiny: bool):
        if tiny:
            return SiT(model="SiT-S/4", input_size=8, in_channels=4, num_classes=10, depth=2, hidden_size=64,
                       num_heads=2, **c)
        return SiT(model="SiT-XL/2", input_size=32, in_channels=4, num_classes=1000, **c)  # 256 px, SD-VAE latents

    def sid2(tiny: bool):
        if tiny:
            return SiD2(preset=None, resolution=16, num_classes=10, patch_size=2, channels=[32, 64],
                        block_types=["resblock", "transformer"], num_updown_blocks=[1], num_mid_blocks=1,
                        block_dropout=[0.0, 0.0], head_dim=16, **c)
        return SiD2(preset="small", resolution=256, num_classes=1000, **c)

    def srdit(tiny: bool):
        if tiny:
            return SRDiT(model="SiT-S/1", input_size=4, in_channels=4, num_classes=10, depth=5, hidden_size=32,
                         num_heads=2, z_dim=32, projector_dim=32, shift_base=16, target_encoder=_tiny_dinov2(16), **c)
        return SRDiT(model="SiT-B/1", input_size=16, in_channels=32, num_classes=1000,
                     target_encoder=DINOv2Targets(random_weights=True, resolution=224), **c)

    def rae_stage1(tiny: bool):
        lpips = LPIPS(ConvFeatures((8, 16)), pretrained=False) if tiny else LPIPS(pretrained=False)
        if tiny:
            disc = DinoDiscriminator(dict(depth=2, key_depths=(0, 1), patch_size=4, embed_dim=32, num_heads=2,
                                          mlp_ratio=2.0, norm_eps=1e-6, in_chans=3), kernel_size=3, image_size=32)
            return RAEStage1(encoder_overrides=dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64, patch_size=4,
                                                    pos_grid=8),
                             decoder="B", decoder_overrides=dict(hidden_size=64, depth=2, num_heads=2, mlp_dim=128),
                             encoder_input_size=32, decoder_patch_size=4, pretrained_encoder=None, lpips=lpips,
                             discriminator=disc, optimizer=dict(warmup_epochs=None, grad_clip=1.0), num_classes=10, **c)
        return RAEStage1(decoder="XL", pretrained_encoder=None, lpips=lpips, discriminator=DinoDiscriminator("S_8"),
                         optimizer=dict(warmup_epochs=None, grad_clip=1.0), **c)

    def rae_stage2(tiny: bool):
        if tiny:
            return RAEStage2(model="DiTDH-S", depth=2, hidden_size=64, num_heads=2, head_depth=1, head_hidden_size=64,
                             head_num_heads=2, input_size=4, in_channels=16, num_classes=10, shift_base=64,
                             official_rae=False, **c)
        return RAEStage2(model="DiTDH-XL", official_rae=False, **c)

    def speeddiff(tiny: bool):
        if tiny:
            return SpeedDiff(vae="B", resolution=32, vae_overrides=dict(patch_size=4, hidden_size=32, encoder_depth=1,
                                                                         decoder_depth=1, num_heads=2,
                                                                         latent_channels=4, swiglu_multiple_of=32),
                             depth=2, hidden_size=32, num_heads=2, num_classes=10,
                             lpips=LPIPS(ConvFeatures((8, 16)), pretrained=False),
                             discriminator=PatchGANDiscriminator(base_channels=8, num_layers=2),
                             optimizer=dict(grad_clip=1.0), **c)
        return SpeedDiff(vae="XL", model="Refined-DiT-XL", resolution=256, lpips=LPIPS(pretrained=False),
                         optimizer=dict(grad_clip=1.0), **c)

    def latents(channels: int, size: int, tiny_channels: int, tiny_size: int, classes: int = 1000):
        def batch(n: int, tiny: bool, device: torch.device) -> dict[str, torch.Tensor]:
            ch, s = (tiny_channels, tiny_size) if tiny else (channels, size)
            return {"latent": torch.randn(n, ch, s, s, device=device),
                    "label": _labels(n, 10 if tiny else classes, device)}
        return batch

    def images(resolution: int, tiny_resolution: int, with_latent: tuple[int, int, int, int] | None = None):
        def batch(n: int, tiny: bool, device: torch.device) -> dict[str, torch.Tensor]:
            r = tiny_resolution if tiny else resolution
            out = {"image": torch.rand(n, 3, r, r, device=device) * 2 - 1, "label": _labels(n, 10 if tiny else 1000,
                                                                                            device)}
            if with_latent is not None:
                ch, s, tiny_ch, tiny_s = with_latent
                out["latent"] = torch.randn(n, tiny_ch if tiny else ch, tiny_s if tiny else s, tiny_s if tiny else s,
                                            device=device)
            return out
        return batch

    return {
        "sit": Case("SiT-XL/2 256 px", sit, latents(4, 32, 4, 8), 32, 8, 0.9999),
        "sid2": Case("SiD2 small 256 px", sid2, images(256, 16), 64, 8, 0.9999),
        "srdit": Case("SR-DiT-B/1 256 px (DINOv2 targets on the fly)", srdit, images(256, 16, (32, 16, 4, 4)), 32, 8,
                      0.9999, "400K steps in 10 h, 8×H200, 256: ≥ 11.1 steps/s at 32 per GPU", 11.1),
        "rae_stage1": Case("RAE stage 1 ViT-XL decoder on DINOv2-B", rae_stage1, images(256, 32), 64, 8, 0.9999),
        "rae_stage2": Case("RAE stage 2 DiT^DH-XL 256 px", rae_stage2, latents(768, 16, 16, 4), 128, 8, 0.9995),
        "speeddiff": Case("SpeedDiff-XL 256 px (ViT-VAE-XL + Refined-DiT-XL)", speeddiff, images(256, 32), 16, 8,
                          0.9999, "0.31 s/step, 16×H100, 256: 3.2 steps/s at 16 per GPU", 1 / 0.31),
    }


class StepTimer:
    """A Lightning callback: the wall-clock time at the end of every training step (device synchronised)."""

    def __new__(cls, device: torch.device):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.ends: list[float] = []

            def on_train_batch_end(self, *args: Any) -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.ends.append(time.perf_counter())

        return _Timer()


def step_flops(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs of one training step on ``batch`` (eager, bf16 autocast): forward + backward of the generator side
    and, for the GAN recipes, of the discriminator's; gradients are cleared afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(module.parameters()).device
    module.train()
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            losses = module.compute_losses(batch)
        losses["loss"].backward()
        if getattr(module, "discriminator", None) is not None and hasattr(module, "discriminator_losses"):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                d = module.discriminator_losses(batch)
            if d is not None:
                d["d_loss"].backward()
    module.zero_grad(set_to_none=True)
    if hasattr(module, "end_of_step"):
        module.end_of_step()
    return float(counter.get_total_flops())


def bf16_peak_tflops(device: torch.device) -> tuple[float, str]:
    """The device's dense bf16 peak: the datasheet value for known GPUs, else the best large bf16 matmul here."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in DENSE_BF16_PEAK.items():
            if key in name:
                return value, f"{name} datasheet"
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12, f"measured {n}³ bf16 matmul"


def run_case(key: str, case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import lightning as L

    from speedrun_diffusion.callbacks import EMA

    torch.manual_seed(0)
    batch_size = args.batch or (case.tiny_batch if args.tiny else case.paper_batch)
    module = case.build(args.tiny).to(device)
    flops = step_flops(module, case.batch(1, args.tiny, device)) * batch_size
    batch = case.batch(batch_size, args.tiny, device)
    timer = StepTimer(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    manual = not module.automatic_optimization
    trainer = L.Trainer(accelerator=device.type, devices=1, precision="bf16-mixed", max_steps=args.warmup + args.steps,
                        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=None if manual else 1.0,
                        callbacks=[EMA(decay=case.ema_decay), timer])
    start = time.perf_counter()
    from torch.utils.data import DataLoader

    trainer.fit(module, train_dataloaders=DataLoader([batch] * (args.warmup + args.steps), batch_size=None))
    total = time.perf_counter() - start
    intervals = [b - a for a, b in zip(timer.ends[args.warmup:], timer.ends[args.warmup + 1:])]
    seconds = statistics.median(intervals) if intervals else float("nan")
    memory = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    optimizer = trainer.optimizers[0]
    return {"recipe": key, "network": f"{case.name}{' (tiny)' if args.tiny else ''}", "batch": batch_size, "step_s": seconds, "steps_per_s": 1 / seconds,
            "images_per_s": batch_size / seconds, "gflops_per_step": flops / 1e9,
            "mfu": flops / seconds / (args.peak * 1e12), "peak_memory_gib": memory, "total_s": total,
            "fused": bool(optimizer.defaults.get("fused")), "compiled": args.compile == "on",
            "paper": case.paper if not args.tiny else "—",
            "vs_paper": (1 / seconds) / case.paper_steps_per_s if case.paper_steps_per_s and not args.tiny else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=None, help="subset of: sit sid2 srdit rae_stage1 rae_stage2 "
                                                                   "speeddiff (default: all)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per recipe")
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps first (compiling happens here)")
    parser.add_argument("--batch", type=int, default=None, help="override the per-GPU batch of every recipe")
    parser.add_argument("--compile", choices=["on", "off"], default="on")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (implied without CUDA)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs only)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list on the last line")
    args = parser.parse_args()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu":
        args.tiny = True
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.peak, peak_source = bf16_peak_tflops(device)
    all_cases = cases(args.compile == "on")
    keys = args.recipes or list(all_cases)
    unknown = sorted(set(keys) - set(all_cases))
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {list(all_cases)}")
    print(f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU, tiny sizes'}), torch "
          f"{torch.__version__}; bf16 peak {args.peak:.1f} TFLOP/s ({peak_source}); bf16-mixed, fused AdamW, compile "
          f"{args.compile}; {args.warmup} warm-up + {args.steps} timed steps", flush=True)
    rows = []
    for key in keys:
        row = run_case(key, all_cases[key], args, device)
        rows.append(row)
        print(f"  {key}: {1e3 * row['step_s']:.1f} ms/step ({row['total_s']:.0f} s in all)", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    memory_unit = "GiB" if device.type == "cuda" else "GiB RSS"
    print_table(["recipe", "network", "batch/GPU", "ms/step", "steps/s", "images/s", "GFLOP/step", "MFU %",
                 f"peak memory ({memory_unit})", "paper", "steps/s ÷ paper"],
                [[r["recipe"], r["network"], r["batch"], f"{1e3 * r['step_s']:.1f}", f"{r['steps_per_s']:.2f}",
                  f"{r['images_per_s']:.1f}", f"{r['gflops_per_step']:.1f}", f"{100 * r['mfu']:.1f}",
                  f"{r['peak_memory_gib']:.2f}", r["paper"], "" if r["vs_paper"] is None else f"{r['vs_paper']:.2f}"]
                 for r in rows], markdown=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
