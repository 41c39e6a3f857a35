"""Time one SiD2 training step (sigmoid loss forward + backward + the recipe's optimizer) in fp32 and under bf16 autocast.

The module and batch size are those of ``configs/sid2/tiny_cpu.yaml`` (built through the CLI, so the table
follows the config); ``--set`` overrides a model field the way the command line does. Prints params, ms/step,
model GFLOPs/step (torch.utils.flop_counter, forward + backward), achieved TFLOP/s, fraction of this machine's
matmul peak for the dtype, and peak resident memory (each row in its own subprocess).

    python benchmarks/sid2_step.py
    python benchmarks/sid2_step.py --markdown --set "channels=[64,256,512]"
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tables import print_table  # noqa: E402
from benchmarks.timing import (  # noqa: E402
    add_step_arguments, recipe_training_step, rows_by_precision, time_step,
)

CONFIG = ROOT / "configs" / "sid2" / "tiny_cpu.yaml"


def tiny(overrides: list[str]):
    """The SiD2 module of ``CONFIG`` (model overrides as ``key=value``) and its datamodule's batch size and resolution."""
    from speedrun_diffusion.lightning_modules.cli import build_cli

    args = ["--config", str(CONFIG)] + [f"--model.init_args.{o}" for o in overrides]
    sys_argv, sys.argv = sys.argv, ["sid2-benchmark"]
    try:
        cli = build_cli(args, run=False)
    finally:
        sys.argv = sys_argv
    data = cli.datamodule.hparams
    return cli.model, data.batch_size, data.resolution, data.num_classes


def run_one(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    module, batch_size, resolution, num_classes = tiny(args.set)
    module.train()
    opt = module.configure_optimizers()["optimizer"]   # the recipe's own AdamW (no weight decay: Adam)
    batch = {"image": torch.rand(batch_size, 3, resolution, resolution) * 2 - 1,
             "label": torch.randint(0, num_classes, (batch_size,))}
    step = recipe_training_step(module, batch, opt, args.precision)
    row = time_step(step, args.steps, args.warmup, args.precision)
    params = sum(p.numel() for p in module.net.parameters()) / 1e6
    return {"params_m": params, "batch": batch_size, "resolution": resolution, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="model override key=value (repeatable)")
    parser.add_argument("--markdown", action="store_true")
    add_step_arguments(parser, steps=10, warmup=3)
    args = parser.parse_args()
    timed = rows_by_precision(args, __file__, [a for a in sys.argv[1:] if a != "--markdown"], run_one)
    if timed is None:
        return
    rows = []
    for r in timed:
        name = f"SiD2 tiny_cpu.yaml{' ' + ' '.join(args.set) if args.set else ''}, batch {r['batch']}, {r['resolution']}² px"
        rows.append([name, f"{r['params_m']:.2f}", r["precision"], f"{r['ms']:.1f}", f"{r['gflops']:.2f}",
                     f"{r['tflops']:.3f}", f"{100 * r['peak_fraction']:.1f}", f"{r['max_rss_mb']:.0f}"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = ["model", "params (M)", "precision", "ms/step", "GFLOPs/step", "TFLOP/s", "% matmul peak", "max RSS (MB)"]
    print_table(header, rows, args.markdown)


if __name__ == "__main__":
    main()
