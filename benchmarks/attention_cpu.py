"""Attention forward + backward on CPU: PyTorch's fused SDPA kernel against the explicit
matmul-softmax-matmul, the measurement behind ``blocks.attention.dot_product_attention``.

Shapes are those of the tiny CPU configs (SiT-S/4 on 8² tokens, the SiD2 U-ViT on 8² and 4²) and two
longer sequences. Columns: milliseconds per forward + backward (median of ``--repeats``), the attention
GFLOPs of one call (4·B·H·N²·Dh forward, ×3 with backward), the achieved GFLOP/s and its fraction of
this machine's 2048³ matmul peak for the dtype; ``max err`` is the largest absolute deviation from a
float32 SDPA reference.

    python benchmarks/attention_cpu.py
    python benchmarks/attention_cpu.py --markdown
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tables import print_table  # noqa: E402
from benchmarks.timing import matmul_peak_tflops, median_seconds  # noqa: E402
from speedrun_diffusion.lightning_modules.blocks.attention import explicit_attention  # noqa: E402

SHAPES = [  # (batch, heads, tokens, head_dim)
    (64, 3, 64, 64),    # SiT-S/4 at 32² (configs/sit/tiny_cpu.yaml)
    (64, 4, 64, 32),    # SiD2 tiny, 8² level
    (64, 8, 16, 32),    # SiD2 tiny, 4² level
    (16, 4, 256, 32),
    (2, 12, 257, 64),   # SR-DiT-B/1 dense blocks at 256 px (REG token + 16² patches), batch 2
    (16, 12, 257, 64),  # the same, batch 16
    (16, 6, 256, 64),   # RAE DiT^DH-S backbone at 256 px, batch 16
    (16, 16, 256, 128),  # its 2048-wide DDT head
    (2, 12, 513, 64),
    (4, 6, 1024, 64),
    (2, 12, 1025, 64),  # SR-DiT-B/1 at 512 px
]


def time_ms(fn, q, k, v, repeats: int) -> float:
    return 1000 * median_seconds(lambda: fn(q, k, v).float().sum().backward(), repeats)


def rows(repeats: int) -> list[dict]:
    out = []
    peak = {dtype: matmul_peak_tflops(dtype) * 1000 for dtype in (torch.float32, torch.bfloat16)}  # GFLOP/s
    for b, h, n, d in SHAPES:
        gflop = 3 * 4 * b * h * n * n * d / 1e9
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(b, h, n, d, dtype=dtype, requires_grad=True) for _ in range(3))
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            for name, fn in (("sdpa", F.scaled_dot_product_attention), ("explicit", explicit_attention)):
                ms = time_ms(fn, q, k, v, repeats)
                with torch.no_grad():
                    err = (fn(q, k, v).float() - ref).abs().max().item()
                out.append(dict(shape=f"{b}×{h}×{n}×{d}", dtype=str(dtype).removeprefix("torch."), kernel=name,
                                ms=ms, gflops=gflop, rate=gflop / (ms / 1000), err=err,
                                peak=100 * gflop / (ms / 1000) / peak[dtype]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = ["B×H×N×Dh", "dtype", "kernel", "ms fwd+bwd", "GFLOP", "GFLOP/s", "% matmul peak", "max err"]
    table = [[r["shape"], r["dtype"], r["kernel"], f"{r['ms']:.1f}", f"{r['gflops']:.3f}", f"{r['rate']:.0f}",
              f"{r['peak']:.1f}", f"{r['err']:.1e}"] for r in rows(args.repeats)]
    print_table(header, table, args.markdown)


if __name__ == "__main__":
    main()
