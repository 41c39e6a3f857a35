"""SR-DiT sizes, FLOPs and CPU step times (issue 5; reference/srdit/README "Parameter counts").

1. Parameters of SR-DiT-B/1 (256 and 512 px), INVAE f16d32 and the DINOv2-B/14 target encoder, built on the meta
   device. "official" counts as the official code does: the frozen sin-cos ``pos_embed`` (an ``nn.Parameter``
   there, a buffer here) and the REPA projector included.
2. GFLOPs per forward at batch 1 (``torch.utils.flop_counter``: matmuls, convolutions and attention, 2 FLOPs
   per multiply-add): the denoiser in training (SPRINT routes 25 % of the tokens through the middle blocks) and
   in sampling (dense), the DINOv2 targets, INVAE encode and decode.
3. CPU training step (forward + backward + AdamW) in fp32 and bf16 autocast, each row in its own process:
   ms/step, GFLOPs/step, achieved TFLOP/s and the fraction of this machine's measured matmul peak
   (benchmarks/sit_step.py), peak resident memory. Rows: configs/srdit/tiny_cpu.yaml (its batch of 32 images,
   INVAE and DINOv2-like targets on the fly) and a CPU-feasible slice of SR-DiT-B/1 at 256 px: batch 2 of cached
   latents with pre-computed targets, and with the DINOv2-B/14 targets computed on the fly from 256² images.

    python benchmarks/srdit.py                 # everything
    python benchmarks/srdit.py --skip-steps    # parameters and FLOPs only (seconds)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.timing import time_step  # noqa: E402


def b1(input_size: int = 16, **kw):
    """SR-DiT-B/1 as configs/srdit/b1_*.yaml builds it (INVAE tokenizer, DINOv2-B/14 targets, random weights)."""
    from speedrun_diffusion.lightning_modules import SRDiT
    from speedrun_diffusion.lightning_modules.networks import INVAE
    from speedrun_diffusion.lightning_modules.networks.target_encoders import DINOv2Targets

    return SRDiT(model="SiT-B/1", input_size=input_size, in_channels=32, num_classes=1000, tokenizer=INVAE(),
                 target_encoder=DINOv2Targets(random_weights=True, resolution=14 * input_size), **kw)


def tiny():
    """The module of configs/srdit/tiny_cpu.yaml (and its datamodule's batch size and resolution)."""
    from speedrun_diffusion.lightning_modules.cli import build_cli

    sys_argv, sys.argv = sys.argv, ["srdit-benchmark"]
    try:
        cli = build_cli(["--config", str(ROOT / "configs" / "srdit" / "tiny_cpu.yaml")], run=False)
    finally:
        sys.argv = sys_argv
    data = cli.datamodule.hparams
    return cli.model, data.batch_size, data.resolution


def count(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def parameter_table() -> list[tuple[str, int]]:
    from speedrun_diffusion.lightning_modules.networks.dit import count_parameters, official_parameter_count

    rows = []
    with torch.device("meta"):
        for res in (256, 512):
            net = b1(res // 16).net
            projector = count_parameters(net.projectors)
            rows += [(f"SR-DiT-B/1 {res} px, official count (pos_embed + REPA projector)", official_parameter_count(net)),
                     (f"SR-DiT-B/1 {res} px, trainable", count_parameters(net, trainable_only=True)),
                     (f"SR-DiT-B/1 {res} px, without the REPA projector (sampling)", official_parameter_count(net) - projector)]
        module = b1()
        rows += [("INVAE f16d32 (frozen)", count_parameters(module.tokenizer)),
                 ("DINOv2-B/14 target encoder (frozen, training only)", count_parameters(module.target_encoder))]
    return rows


def forward_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def flops_table() -> list[tuple[str, float]]:
    rows = []
    with torch.device("meta"):
        for res in (256, 512):
            module = b1(res // 16)
            g = res // 16
            x, t, y = torch.randn(1, 32, g, g), torch.rand(1), torch.zeros(1, dtype=torch.int64)
            cls = torch.randn(1, 768)
            images = torch.randn(1, 3, res, res)
            module.net.train()
            rows.append((f"SR-DiT-B/1 {res} px denoiser, training forward (SPRINT 25 % tokens)",
                         forward_flops(lambda: module.net(x, t, y, cls, path_drop=False))))
            module.net.eval()
            rows.append((f"SR-DiT-B/1 {res} px denoiser, sampling forward (dense)",
                         forward_flops(lambda: module.net.velocity((x, cls), t, y))))
            rows.append((f"DINOv2-B/14 targets at {14 * g} px", forward_flops(lambda: module.target_encoder(images))))
            rows.append((f"INVAE encode {res} px", forward_flops(lambda: module.tokenizer.encode(images))))
            rows.append((f"INVAE decode {res} px", forward_flops(lambda: module.tokenizer.decode(x))))
    return rows


def run_step(row: str, precision: str, steps: int, warmup: int) -> dict:
    """One training-step timing row (runs in its own process so max RSS is this row's)."""
    torch.manual_seed(0)
    if row == "tiny":
        module, batch_size, res = tiny()
        batch = {"image": torch.rand(batch_size, 3, res, res) * 2 - 1, "label": torch.randint(0, 10, (batch_size,))}
        name = f"tiny_cpu.yaml (SiT 6×128, {res}² images, batch {batch_size}, encode + targets on the fly)"
    else:
        module, batch_size = b1(), 2
        batch = {"latent": torch.randn(batch_size, 32, 16, 16), "label": torch.randint(0, 1000, (batch_size,))}
        if row == "b1_cached":
            batch["repa_target"] = torch.randn(batch_size, 257, 768)
            name = "SR-DiT-B/1 256 px, batch 2, cached latents + pre-computed targets"
        else:
            batch["image"] = torch.rand(batch_size, 3, 256, 256) * 2 - 1
            name = "SR-DiT-B/1 256 px, batch 2, cached latents + DINOv2-B/14 on the fly"
    module.train()
    opt = torch.optim.AdamW(module.trainable_parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        with autocast:
            loss = module.compute_losses(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.trainable_parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"name": name, **time_step(step, steps, warmup, precision)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-steps", action="store_true", help="parameters and FLOPs only")
    parser.add_argument("--rows", nargs="+", default=["tiny", "b1_cached", "b1_dino"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["fp32", "bf16"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_step(args.row, args.precision, args.steps, args.warmup)))
        return

    print("| model | parameters |\n|---|---|")
    for name, n in parameter_table():
        print(f"| {name} | {n:,} |")
    print("\n| forward, batch 1 | GFLOPs |\n|---|---|")
    for name, g in flops_table():
        print(f"| {name} | {g:.2f} |")
    if args.skip_steps:
        return
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; training step = forward + backward + "
          f"clip + AdamW")
    print("| training step | precision | ms/step | GFLOPs/step | TFLOP/s | % matmul peak | max RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for row in args.rows:
        for precision in ("fp32", "bf16"):
            out = subprocess.run([sys.executable, __file__, "--row", row, "--precision", precision, "--steps",
                                  str(args.steps), "--warmup", str(args.warmup)], capture_output=True, text=True)
            if out.returncode:
                print(f"| {row} | {precision} | failed: {out.stderr.strip().splitlines()[-1]} | | | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['name']} | {r['precision']} | {r['ms']:.1f} | {r['gflops']:.2f} | {r['tflops']:.3f} | "
                  f"{100 * r['peak_fraction']:.1f} | {r['max_rss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
