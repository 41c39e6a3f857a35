"""Time one SiT training step (forward + backward + AdamW) in fp32 and under bf16 autocast.

Prints a table: model, precision, ms/step, model GFLOPs/step (torch.utils.flop_counter: matmuls
and attention, forward + backward), achieved TFLOP/s, fraction of this machine's measured matmul
peak for that dtype, and peak resident memory of the process (each row in its own subprocess).

    python benchmarks/sit_step.py                         # tiny CPU configs
    python benchmarks/sit_step.py --model SiT-B/2 --input-size 32 --in-channels 4 --batch 8
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import (  # noqa: E402
    add_step_arguments, recipe_training_step, rows_by_precision, time_step,
)


def run_one(args: argparse.Namespace) -> dict:
    from speedrun_diffusion.lightning_modules import SiT

    torch.manual_seed(0)
    sizes = {k: v for k, v in dict(depth=args.depth, hidden_size=args.hidden, num_heads=args.heads).items() if v}
    module = SiT(model=args.model, input_size=args.input_size, in_channels=args.in_channels, num_classes=1000, **sizes)
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4)
    batch = {"image": torch.randn(args.batch, args.in_channels, args.input_size, args.input_size),
             "label": torch.randint(0, 1000, (args.batch,))}
    step = recipe_training_step(module, batch, opt, args.precision)
    row = time_step(step, args.steps, args.warmup, args.precision)
    return {"model": args.model, "params_m": sum(p.numel() for p in module.net.parameters()) / 1e6, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="SiT-S/4")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    add_step_arguments(parser, steps=10, warmup=2)
    args = parser.parse_args()
    rows = rows_by_precision(args, __file__, sys.argv[1:], run_one)
    if rows is None:
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| model | params (M) | precision | ms/step | GFLOPs/step | TFLOP/s | % matmul peak | max RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.2f} | {r['precision']} | {r['ms']:.1f} | {r['gflops']:.2f} | "
              f"{r['tflops']:.3f} | {100 * r['peak_fraction']:.1f} | {r['max_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
