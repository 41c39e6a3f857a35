"""GroupNorm forward + backward on CPU, NCHW against channels-last memory: why the U-ViT trunk makes its
input contiguous (``networks/uvit.py``).

The U-ViT stem is a linear layer on tokens, so ``(B, N, C) -> (B, C, H, W)`` by transpose + reshape gives a
channels-last tensor; PyTorch's CPU GroupNorm follows the input's memory format. Shapes are the SiD2 tiny
ResBlock level (16², 64 channels, batch 64) and a paper-like high-resolution level. GroupNorm has no matmul,
so the table gives element throughput instead of a fraction of the matmul peak.

    python benchmarks/groupnorm_cpu.py
    python benchmarks/groupnorm_cpu.py --markdown
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tables import print_table  # noqa: E402
from benchmarks.timing import median_seconds  # noqa: E402

SHAPES = [  # (batch, channels, height, width)
    (64, 64, 16, 16),   # configs/sid2/tiny_cpu.yaml, ResBlock level
    (8, 128, 64, 64),   # a high-resolution ResBlock level
]


def time_ms(norm: nn.GroupNorm, x: torch.Tensor, repeats: int) -> float:
    return 1000 * median_seconds(lambda: norm(x).float().sum().backward(), repeats)


def rows(repeats: int) -> list[dict]:
    out = []
    for b, c, h, w in SHAPES:
        norm = nn.GroupNorm(32, c, eps=1e-6)
        for dtype in (torch.float32, torch.bfloat16):
            base = torch.randn(b, c, h, w)
            ref = None
            for layout in ("NCHW", "channels-last"):
                memory_format = torch.contiguous_format if layout == "NCHW" else torch.channels_last
                x = base.to(dtype).contiguous(memory_format=memory_format).requires_grad_(True)
                norm_d = norm.to(dtype)
                ms = time_ms(norm_d, x, repeats)
                with torch.no_grad():
                    y = norm_d(x).float()
                ref = y if ref is None else ref
                out.append(dict(shape=f"{b}×{c}×{h}×{w}", dtype=str(dtype).removeprefix("torch."), layout=layout,
                                ms=ms, rate=b * c * h * w / (ms / 1000) / 1e9, err=(y - ref).abs().max().item()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = ["B×C×H×W", "dtype", "layout", "ms fwd+bwd", "Gelem/s", "max diff to NCHW"]
    table = [[r["shape"], r["dtype"], r["layout"], f"{r['ms']:.2f}", f"{r['rate']:.2f}", f"{r['err']:.1e}"]
             for r in rows(args.repeats)]
    print_table(header, table, args.markdown)


if __name__ == "__main__":
    main()
