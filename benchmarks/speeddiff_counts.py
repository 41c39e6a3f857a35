"""Parameters and GFLOPs of SpeedDiff's networks beside the paper's Tab. 7 (and the Tab. 10 DiT-XL/1 baseline).

Every network is built on the meta device (no memory, no init) at 256² (latent 32 × 16 × 16). GFLOPs
are per image in the papers' convention (``lightning_modules.flops``): multiply-adds of linear layers
and convolutions plus fvcore's norm count, attention score/value matmuls excluded; the last column
adds them back to show that the paper does not count them.

    python benchmarks/speeddiff_counts.py
    python benchmarks/speeddiff_counts.py --json     # {name: {"params": int, "gflops": float}}
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tables import print_table  # noqa: E402
from speedrun_diffusion.lightning_modules.flops import count_macs  # noqa: E402
from speedrun_diffusion.lightning_modules.networks.dit import DiT, count_parameters, official_parameter_count, refined_dit_preset  # noqa: E402
from speedrun_diffusion.lightning_modules.networks.vit_vae import ViTVAE, vit_vae_preset  # noqa: E402

# SpeedDiff supp. Tab. 7 (256²): name -> (params M, GFLOPs).
PAPER: dict[str, tuple[float, float]] = {
    "vae_encoder_b": (28.98, 7.41),
    "vae_encoder_l": (103.68, 26.54),
    "vae_encoder_xl": (218.63, 55.97),
    "vae_decoder_b": (28.95, 7.41),
    "vae_decoder_l": (103.65, 26.54),
    "vae_decoder_xl": (218.58, 55.97),
    "refined_dit_b": (91.38, 21.79),
    "refined_dit_l": (319.38, 79.01),
    "refined_dit_xl": (672.23, 167.07),
    "dit_xl1_baseline": (675.15, 114.42),
}


def counts(resolution: int = 256) -> dict[str, dict]:
    """{name: {"params", "gflops", "gflops_with_attention"}} for every row of ``PAPER``."""
    out: dict[str, dict] = {}
    for size in ("B", "L", "XL"):
        with torch.device("meta"):
            vae = ViTVAE(vit_vae_preset(size, resolution))
            images = torch.zeros(1, 3, resolution, resolution)
            latents = torch.zeros(1, *vae.latent_shape)
            for part, module, x in (("encoder", vae.encoder, images), ("decoder", vae.decoder, latents)):
                macs = count_macs(module, x)
                out[f"vae_{part}_{size.lower()}"] = dict(
                    params=count_parameters(module), gflops=macs.paper / 1e9, gflops_with_attention=macs.total / 1e9
                )
    for name, key, official in (
        ("Refined-DiT-B", "refined_dit_b", False),
        ("Refined-DiT-L", "refined_dit_l", False),
        ("Refined-DiT-XL", "refined_dit_xl", False),
        ("DiT-XL/1", "dit_xl1_baseline", True),  # DiT counts its frozen sin-cos table as a parameter
    ):
        with torch.device("meta"):
            net = DiT(refined_dit_preset(name)).eval()
            cfg = net.cfg
            x = torch.zeros(1, cfg.in_channels, cfg.input_size, cfg.input_size)
            macs = count_macs(net, x, torch.zeros(1), torch.zeros(1, dtype=torch.long))
        params = official_parameter_count(net) if official else count_parameters(net)
        out[key] = dict(params=params, gflops=macs.paper / 1e9, gflops_with_attention=macs.total / 1e9)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help='print {name: {"params": int, "gflops": float}}')
    args = parser.parse_args()
    rows = counts()
    if args.json:
        names = [k for k in PAPER if k != "dit_xl1_baseline"]
        print(json.dumps({k: {"params": rows[k]["params"], "gflops": rows[k]["gflops"]} for k in names}, indent=1))
        return
    header = ["network", "params (M)", "paper", "rel. err", "GFLOPs", "paper", "rel. err", "GFLOPs + attn"]
    table = []
    for name, (p_params, p_gflops) in PAPER.items():
        r = rows[name]
        params = r["params"] / 1e6
        table.append([
            name, f"{params:.2f}", f"{p_params:.2f}", f"{(params - p_params) / p_params:+.3%}",
            f"{r['gflops']:.2f}", f"{p_gflops:.2f}", f"{(r['gflops'] - p_gflops) / p_gflops:+.3%}",
            f"{r['gflops_with_attention']:.2f}",
        ])
    print_table(header, table)


if __name__ == "__main__":
    main()
