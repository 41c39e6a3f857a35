"""What bf16 autocast's weight casts cost on one device, and so what a cached bf16 copy of the weights could save.

    python benchmarks/weight_casts.py                 # SR-DiT-B/1 and DiT^DH-S at 256 px, batch 2, compiled
    python benchmarks/weight_casts.py --batch 16 --compile off

Under bf16 autocast every forward casts each matmul weight (``nn.Linear`` / ``nn.Conv*`` weight and bias) from fp32
to bf16; eager autocast caches the cast within one autocast region, a compiled graph casts at every call. A bf16
copy kept beside the fp32 master weights would replace those casts by one refresh after each optimizer step — the
same cast. So it saves nothing in a training step with one forward per optimizer step (more only with gradient
accumulation), and in a compiled sampler the casts of all its calls but the first. This script times, in this
working tree, the cast of all matmul weights (median of ``--repeats``) beside the recipe's whole bf16 training step
and one sampler step (``benchmarks/step_vs_commit.py``'s step and ``sample()``), with this machine's bf16 matmul
peak and the FLOPs of each.
"""
from __future__ import annotations

import argparse
import time

import torch
from step_vs_commit import NETWORKS, Side, import_this_checkout
from tables import print_table
from timing import matmul_peak_tflops, median_seconds


def matmul_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors autocast casts to bf16 in a forward: weights and biases of linear and convolution layers."""
    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return [t for m in module.modules() if isinstance(m, layers) for t in (m.weight, m.bias) if t is not None]


def row(api: dict, network: str, batch: int, compile_on: bool, args: argparse.Namespace) -> list:
    eager = Side(api, network, batch, "bf16", False, sample_steps=1)  # FLOPs counted eagerly: the same math
    step_flops, sample_flops = eager.flops(eager.step), eager.flops(eager.sample)
    del eager
    side = Side(api, network, batch, "bf16", compile_on, sample_steps=1)
    weights = matmul_weights(side.module.net)
    for _ in range(args.warmup):
        side.step()
    side.sample()
    cast = median_seconds(lambda: [w.detach().to(torch.bfloat16) for w in weights], args.repeats)
    step = median_seconds(side.step, args.repeats, warmup=0)
    sample = median_seconds(side.sample, args.repeats, warmup=0)  # one sampler step (cond + uncond rows)
    peak = matmul_peak_tflops(torch.bfloat16) * 1e12
    return [network, batch, "on" if compile_on else "off", f"{sum(w.numel() for w in weights) / 1e6:.1f}",
            f"{1e3 * cast:.1f}", f"{1e3 * step:.0f}", f"{100 * step_flops / step / peak:.1f}",
            f"{100 * cast / step:.1f}", f"{1e3 * sample:.0f}", f"{100 * sample_flops / sample / peak:.1f}",
            f"{100 * cast / sample:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--compile", choices=["on", "off"], default="on")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first (compiling happens here)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    api = import_this_checkout()  # host memory kept, as speedrun-diffusion does on CPU
    print(f"bf16 autocast, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M')}; % peak against the best 2048³ "
          "bf16 matmul of this run")
    rows = [row(api, n, args.batch, args.compile == "on", args) for n in args.networks]
    print_table(["network", "batch", "compiled", "matmul weights (M)", "cast all ms", "train step ms", "% peak step",
                 "cast % of step", "sampler step ms", "% peak sampler step", "cast % of sampler step"], rows,
                markdown=args.markdown)


if __name__ == "__main__":
    main()
