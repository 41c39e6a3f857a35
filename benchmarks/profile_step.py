"""Where the time of one training step (or one ``sample()`` call) goes, and what faster matmuls alone could give.

    python benchmarks/profile_step.py --network srdit_b1 --batch 2 --precision bf16            # the training step
    python benchmarks/profile_step.py --network srdit_b1 --batch 2 --precision bf16 --what sample

The step and the sampler are those ``step_vs_commit.py`` times for this working tree (same recipes, batch, EMA,
clipping, compile group, kept host memory); after ``--warmup`` calls (compiling included) ``--calls`` calls are
timed, then ``--calls`` more run under ``torch.profiler`` with FLOP counting (the profiler slows the calls: its
times are shares, the wall time is the first one). Each op's self time goes to one category: matmuls (``addmm``,
``mm``, ``bmm``: their FLOPs and rate as % of the matmul peak measured in the same run), the AdamW kernel, the EMA's
lerp, the gradient norm and clip, the other ops; the compiled graphs' own kernels (norms, modulation, GELU, casts,
... fused by inductor) are what these leave of the wall time (the profiler charges its own overhead to the graph
that launches the ops). The last line bounds any further work: the wall time if the matmuls ran at 100 % of the
peak with everything else as it is, and if everything but the matmuls (as they run) took no time at all.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

MATMULS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")
GRAPHS = "compiled graphs (rest of wall)"
CATEGORIES = (  # (category, test on the op name), first match wins
    ("matmul", lambda n: n in MATMULS),
    (GRAPHS, lambda n: "cpp_fused" in n or "CompiledFxGraph" in n),
    ("AdamW", lambda n: "adam" in n),
    ("EMA lerp", lambda n: "lerp" in n),  # the step's only lerp
    ("gradient norm / clip", lambda n: n in ("aten::linalg_vector_norm", "aten::_foreach_norm", "aten::_foreach_mul_")),
)


def category(name: str) -> str:
    return next((label for label, test in CATEGORIES if test(name)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=["srdit_b1", "ditdh_s"], default="srdit_b1")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--what", choices=["step", "sample"], default="step")
    parser.add_argument("--compile", choices=["on", "off"], default="on", help="the recipe's compile group")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (compiling happens here)")
    parser.add_argument("--calls", type=int, default=3, help="profiled calls")
    parser.add_argument("--sample-steps", type=int, default=5, help="sampler steps of one sample() call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="ops listed by self time")
    parser.add_argument("--json", action="store_true", help="also print the numbers as one JSON line, last")
    parser.add_argument("--tiny", action="store_true", help="narrow networks: a smoke test of the script")
    args = parser.parse_args()

    import torch
    from step_vs_commit import Side, import_this_checkout  # benchmarks/step_vs_commit.py
    from tables import print_table  # benchmarks/tables.py
    from timing import matmul_peak_tflops  # benchmarks/timing.py
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    api = import_this_checkout()  # host memory kept, as speedrun-diffusion on CPU
    side = Side(api, args.network, args.batch, args.precision, args.compile == "on", args.sample_steps, args.tiny)
    call = side.step if args.what == "step" else side.sample
    for _ in range(args.warmup):
        call()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak_tflops(dtype)
    plain = []
    for _ in range(args.calls):  # the wall time without the profiler
        start = time.perf_counter()
        call()
        plain.append(time.perf_counter() - start)
    wall = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(args.calls):
            call()
    wall = (time.perf_counter() - wall) / args.calls
    peak = max(peak, matmul_peak_tflops(dtype))

    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    now = 1e3 * statistics.median(plain)
    by_category: dict[str, float] = {}
    for e in events:
        by_category[category(e.key)] = by_category.get(category(e.key), 0.0) + e.self_cpu_time_total / 1e3 / args.calls
    # a compiled graph's own self time under the profiler holds the profiler's overhead for every op it launches:
    # its kernels are taken as what the profiled ops leave of the wall time measured without the profiler
    by_category[GRAPHS] = max(now - sum(ms for label, ms in by_category.items() if label != GRAPHS), 0.0)
    matmul_ms = by_category.get("matmul", 0.0)
    matmul_flops = sum(e.flops for e in events if e.key in MATMULS) / args.calls
    rate = matmul_flops / (matmul_ms / 1e3) / 1e12 if matmul_ms else 0.0
    at_peak = now - matmul_ms + matmul_flops / peak / 1e9

    print(f"{args.network} batch {args.batch} {args.precision} {args.what} (compile {args.compile}), "
          f"{args.threads} threads; {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"wall {now:.0f} ms per call (median of {args.calls}; {1e3 * wall:.0f} ms under the profiler); matmul peak "
          f"(best 2048³) {peak:.3f} TFLOP/s")
    rows = []
    for label in [c for c, _ in CATEGORIES] + ["other"]:
        ms = by_category.get(label, 0.0)
        extra = f"{matmul_flops / 1e9:.1f} GFLOP at {rate:.3f} TFLOP/s = {100 * rate / peak:.0f} % of peak" \
            if label == "matmul" else ""
        rows.append([label, f"{ms:.0f}", f"{100 * ms / now:.1f}", extra])
    print_table(["category", "ms per call", "% of wall", "matmul rate"], rows, markdown=True)
    top = sorted((e for e in events if category(e.key) != GRAPHS), key=lambda e: -e.self_cpu_time_total)[: args.top]
    print()
    print_table(["op", "category", "ms per call", "% of wall", "calls per call"],
                [[e.key[:70], category(e.key), f"{e.self_cpu_time_total / 1e3 / args.calls:.1f}",
                  f"{100 * e.self_cpu_time_total / 1e3 / args.calls / now:.1f}", e.count // args.calls]
                 for e in top], markdown=True)
    print(f"\nwall {now:.0f} ms; with its matmuls at 100 % of the peak and the rest as it is: {at_peak:.0f} ms "
          f"({now / at_peak:.2f}x faster); its matmuls alone, as they run: {matmul_ms:.0f} ms "
          f"({now / max(matmul_ms, 1e-9):.2f}x faster)")
    if args.json:
        print(json.dumps({"network": args.network, "batch": args.batch, "precision": args.precision,
                          "what": args.what, "wall_ms": now, "category_ms": by_category, "matmul_gflop":
                          matmul_flops / 1e9, "matmul_pct_peak": 100 * rate / peak, "peak_tflops": peak,
                          "wall_ms_matmuls_at_peak": at_peak, "wall_ms_matmuls_only": matmul_ms}))


sys.path.insert(0, str(Path(__file__).resolve().parent))
if __name__ == "__main__":
    main()
