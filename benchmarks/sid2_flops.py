"""Parameters and compute of the SiD2 App. A.4 presets (small / flop heavy at 128, 256, 512).

Each network is built on the meta device (no memory, no init). Columns: parameters of the U-ViT
(1000 classes + null), forward GFLOPs per image by the App. A.2 formulas (multiply-adds of the
transformer / ResBlock matmuls and attention), forward GFLOPs per image counted by
torch.utils.flop_counter (2 FLOPs per multiply-add, every matmul / convolution / attention of the
network), and the App. A.2 training-step cost 3 × forward (EDM2's convention, used by SiD2 Fig. 7).

    python benchmarks/sid2_flops.py
    python benchmarks/sid2_flops.py --markdown
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tables import print_table  # noqa: E402
from speedrun_diffusion.lightning_modules.networks.uvit import UViT, measured_gflops, uvit_formula_gflops, uvit_preset  # noqa: E402


def rows() -> list[dict]:
    out = []
    for name in ("small", "flop_heavy"):
        for resolution in (128, 256, 512):
            cfg = uvit_preset(name, resolution)
            with torch.device("meta"):
                net = UViT(cfg)
            formula = uvit_formula_gflops(cfg)
            out.append(dict(
                preset=name, resolution=resolution, patch=cfg.patch_size, top=f"{cfg.base_size}²×{cfg.channels[0]}",
                params=sum(p.numel() for p in net.parameters()) / 1e6, formula=formula,
                measured=measured_gflops(net), train=3 * formula,
            ))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    header = ["preset", "res", "patch", "top level", "params (M)", "A.2 GFLOPs/fwd", "counted GFLOPs/fwd",
              "counted/A.2", "A.2 GFLOPs/train step"]
    table = [[r["preset"], r["resolution"], r["patch"], r["top"], f"{r['params']:.1f}", f"{r['formula']:.1f}",
              f"{r['measured']:.1f}", f"{r['measured'] / r['formula']:.3f}", f"{r['train']:.1f}"] for r in rows()]
    print_table(header, table, args.markdown)


if __name__ == "__main__":
    main()
