"""RAE stage 2 (and the stage-1 decoders when present): parameters, GFLOPs per forward, CPU step time.

Three tables:

1. Full-size networks built on the meta device (no memory, no init): parameters as the official code counts
   them (frozen sin-cos table and Fourier W included) and trainable, beside the paper's figure; GFLOPs per
   image in the papers' convention (``lightning_modules.flops``: multiply-adds of linears / convs + norms,
   attention matmuls left out), the same with the attention matmuls, and torch.utils.flop_counter's count
   (2 FLOPs per multiply-add, attention included). Rows: DiT^DH-S/B/L/XL at 256 px (RAE Fig. 6, Table 18:
   839M, 145.03 GFLOPs for XL), DiT^DH-XL at 512 px, LightningDiT-XL, the DDT-head variants of Tables 15-16
   (head only), and the ViT-B/L/XL pixel decoders if ``lightning_modules.networks.rae_decoder`` exists.
   The DDT head modulates every token (adaLN Linear(D, 6D) per token), which is most of the gap to the
   paper's head GFLOPs: the "adaLN/img" column charges those regressors once per image instead.
2. A training step (transport loss forward + backward + AdamW) of a tiny DiT^DH on this CPU, fp32 and bf16
   autocast, each in its own subprocess: ms/step, counted GFLOPs/step, achieved TFLOP/s, fraction of the
   machine's matmul peak for that dtype (best of a few 2048³ matmuls), peak resident memory.
3. The same for a ``--sample-steps`` Euler ODE sample of the tiny network (forward only).

    python benchmarks/rae.py
    python benchmarks/rae.py --skip-full     # only the CPU timings
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tables import print_table  # noqa: E402
from benchmarks.timing import row_in_subprocess, time_step  # noqa: E402
from speedrun_diffusion.lightning_modules.flops import count_macs  # noqa: E402
from speedrun_diffusion.lightning_modules.networks.ddt_head import DDTHead, DDTHeadConfig  # noqa: E402
from speedrun_diffusion.lightning_modules.networks.dit import DiT, count_parameters, lightningdit_preset, official_parameter_count  # noqa: E402
from speedrun_diffusion.lightning_modules.networks.ditdh import DiTDH, DiTDHConfig, ditdh_preset  # noqa: E402

# RAE paper figures: Table 18 (DiT^DH-XL params / GFLOPs at 256 and 512), Table 15 (head GFLOPs).
PAPER = {"DiTDH-XL@256": (839.0, 145.03), "DiTDH-XL@512": (839.0, 638.83),
         "head 6x1152": (None, 25.65), "head 4x2048": (None, 53.14), "head 2x2048": (None, 26.78)}


def flop_counter_gflops(module: torch.nn.Module, *args) -> float:
    """torch.utils.flop_counter total (2 per multiply-add, SDPA included), GFLOPs; works on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops() / 1e9


def per_token_adaln_gmacs(net: torch.nn.Module, tokens: int) -> float:
    """GMACs of the DDT head's per-token adaLN regressors beyond one row per image: the paper's head GFLOPs
    (Table 15, Table 18) match our count when these are charged once per image, as in a DiT block."""
    head = net.head if isinstance(net, DiTDH) else net
    if not isinstance(head, DDTHead):
        return 0.0
    linears = [b.adaLN_modulation[1] for b in head.blocks] + [head.final_layer.adaLN_modulation[1]]
    return sum((tokens - 1) * m.in_features * m.out_features for m in linears) / 1e9


def _net_inputs(cfg_backbone) -> tuple:
    c, s = cfg_backbone.in_channels, cfg_backbone.input_size
    return torch.zeros(1, c, s, s), torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long)


def full_size_rows() -> list[dict]:
    rows = []
    nets = [(f"DiTDH-{s}@256", lambda s=s: DiTDH(ditdh_preset(f"DiTDH-{s}"))) for s in ("S", "B", "L", "XL")]
    nets += [("DiTDH-XL@512", lambda: DiTDH(ditdh_preset("DiTDH-XL", input_size=32))),
             ("LightningDiT-XL@256", lambda: DiT(lightningdit_preset("LightningDiT-XL/1")))]
    for name, build in nets:
        with torch.device("meta"):
            net = build().eval()
            b = net.cfg.backbone if isinstance(net, DiTDH) else net.cfg
            args = _net_inputs(b)
            macs = count_macs(net, *args)
            flops = flop_counter_gflops(net, *args)
        rows.append(dict(name=name, params=official_parameter_count(net), trainable=count_parameters(net, True),
                         gflops=macs.paper / 1e9, gflops_attn=macs.total / 1e9, counter=flops,
                         adaln=per_token_adaln_gmacs(net, b.num_tokens)))
    # Table 15 / 16 heads alone on DiT^DH-XL at 256 (z_t given): depth × width
    xl = ditdh_preset("DiTDH-XL")
    for depth, width, heads in ((6, 1152, 16), (4, 2048, 16), (2, 2048, 16), (2, 768, 12), (2, 1536, 16), (2, 2688, 21)):
        with torch.device("meta"):
            head = DDTHead(DDTHeadConfig(width, depth, heads), xl.backbone, cond_dim=1152).eval()
            x, _, _ = _net_inputs(xl.backbone)
            z, t_emb = torch.zeros(1, 256, 1152), torch.zeros(1, 1152)
            macs = count_macs(head, x, z, t_emb)
            flops = flop_counter_gflops(head, x, z, t_emb)
        rows.append(dict(name=f"head {depth}x{width}", params=count_parameters(head), trainable=count_parameters(head),
                         gflops=macs.paper / 1e9, gflops_attn=macs.total / 1e9, counter=flops,
                         adaln=per_token_adaln_gmacs(head, xl.backbone.num_tokens)))
    try:
        from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder, rae_decoder_preset
    except ImportError:
        print("(lightning_modules.networks.rae_decoder not found: decoder rows skipped)")
        return rows
    for size in ("B", "L", "XL"):
        with torch.device("meta"):
            dec = RAEDecoder(rae_decoder_preset(size)).eval()
            tokens = torch.zeros(1, dec.cfg.num_patches, dec.cfg.latent_dim)
            macs = count_macs(dec, tokens)
            flops = flop_counter_gflops(dec, tokens)
        rows.append(dict(name=f"decoder ViT-{size}", params=count_parameters(dec), trainable=count_parameters(dec),
                         gflops=macs.paper / 1e9, gflops_attn=macs.total / 1e9, counter=flops, adaln=0.0))
    return rows


def tiny_config(args: argparse.Namespace) -> DiTDHConfig:
    backbone = lightningdit_preset("LightningDiT-S/1", check_width=False, input_size=args.input_size,
                                   in_channels=args.channels, depth=args.depth, hidden_size=args.hidden,
                                   num_heads=args.heads, num_classes=1000)
    return DiTDHConfig(backbone, DDTHeadConfig(args.head_width, 2, args.heads))


def run_one(args: argparse.Namespace) -> dict:
    """One timing row (in a fresh process, so max RSS is this row's)."""
    torch.set_num_threads(args.threads)
    from speedrun_diffusion.lightning_modules.diffusion import GuidedDenoiser
    from speedrun_diffusion.lightning_modules.diffusion.rae_flow import RAETransport
    from speedrun_diffusion.lightning_modules.losses.rae_transport import rae_transport_loss

    torch.manual_seed(0)
    net = DiTDH(tiny_config(args))
    transport = RAETransport(latent_shape=(args.channels, args.input_size, args.input_size))
    sampler = transport.time_sampler()
    x0 = torch.randn(args.batch, args.channels, args.input_size, args.input_size)
    y = torch.randint(0, 1000, (args.batch,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    if args.what == "train":
        opt = torch.optim.AdamW(net.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0)

        def work() -> None:
            with autocast:
                loss = rae_transport_loss(net, x0, y, sampler).loss.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        net.eval()
        denoise = GuidedDenoiser(net).with_labels(y)

        def work() -> None:
            with autocast:
                transport.sample(denoise, torch.randn_like(x0), num_steps=args.sample_steps)

    row = time_step(work, args.steps, args.warmup, args.precision)
    return {"what": args.what, "params_m": count_parameters(net) / 1e6, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-full", action="store_true", help="skip the meta-device full-size table")
    parser.add_argument("--input-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--head-width", type=int, default=384)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sample-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for the timings and the matmul peak (1: robust on a shared machine)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="one row only (internal)")
    parser.add_argument("--what", choices=["train", "sample"], default=None, help="one row only (internal)")
    args = parser.parse_args()
    if args.precision:
        print(json.dumps(run_one(args)))
        return
    if not args.skip_full:
        rows = full_size_rows()
        table = []
        for r in rows:
            p_params, p_gflops = PAPER.get(r["name"], (None, None))
            table.append([r["name"], f"{r['params'] / 1e6:.2f}", f"{r['trainable'] / 1e6:.2f}",
                          "" if p_params is None else f"{p_params:.0f}", f"{r['gflops']:.2f}",
                          f"{r['gflops'] - r['adaln']:.2f}", "" if p_gflops is None else f"{p_gflops:.2f}",
                          f"{r['gflops_attn']:.2f}", f"{r['counter']:.2f}"])
        print("Full-size networks (meta device), per image at batch 1:")
        print_table(["network", "params (M)", "trainable (M)", "paper (M)", "GFLOPs", "adaLN/img", "paper",
                     "GFLOPs + attn", "flop_counter GFLOPs"], table)
        print("GFLOPs: multiply-adds (papers' convention); adaLN/img: the same with the head's per-token adaLN "
              "regressors charged once per image (how the paper's head figures come out); flop_counter: 2/MAC + SDPA")
        print()
    own = [a for a in sys.argv[1:] if a != "--skip-full"]
    timing = []
    for what in ("train", "sample"):
        for precision in ("fp32", "bf16"):
            timing.append(row_in_subprocess(__file__, [*own, "--precision", precision, "--what", what]))
    print(f"Tiny DiT^DH on CPU: torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"latent {args.channels}x{args.input_size}x{args.input_size}, {timing[0]['params_m']:.2f} M params; "
          f"'sample' = {args.sample_steps}-step Euler ODE")
    print_table(["work", "precision", "ms", "GFLOPs", "TFLOP/s", "matmul peak TFLOP/s", "% of peak", "max RSS (MB)"],
                [[r["what"], r["precision"], f"{r['ms']:.1f}", f"{r['gflops']:.2f}", f"{r['tflops']:.3f}",
                  f"{r['peak_tflops']:.3f}", f"{100 * r['peak_fraction']:.1f}", f"{r['max_rss_mb']:.0f}"] for r in timing])


if __name__ == "__main__":
    main()
