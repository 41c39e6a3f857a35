"""The whole training step and the sampler of a recipe, this working tree against a git revision, side by side.

    python benchmarks/step_vs_commit.py --baseline 8b0cc2d            # every row: a table
    python benchmarks/step_vs_commit.py --baseline 8b0cc2d --json     # the table, then one JSON line
    python benchmarks/step_vs_commit.py --baseline 8b0cc2d --rows srdit_b1:2:bf16 ditdh_s:16:fp32

What is timed is the step as the recipe trains (Lightning's automatic optimisation, the paper configs' settings):
``compute_losses`` on a batch of cached latents (+ pre-computed REPA / REG targets for SR-DiT: ``repa_target``)
under the precision's autocast, ``backward``, gradient-norm clipping at 1.0 (Lightning's ``clip_gradients``, as
``gradient_clip_val: 1.0`` of configs/srdit/b1_256.yaml and configs/rae/stage2_ditdh_s_256.yaml), the optimizer of
the recipe's own ``configure_optimizers`` and its scheduler, ``zero_grad``, and the ``callbacks.EMA`` update (decay
0.9999 / 0.9995) — built from the recipe objects of each tree, with ``configure_model()`` called as Lightning calls
it (the working tree compiles there with ``--compile on``: the ``compile`` group of the paper GPU configs). The
sampler is the recipe's ``sample()`` with its own default sampler (SR-DiT: Euler–Maruyama on (latent, REG token);
RAE: Euler ODE), ``--sample-steps`` steps for ``batch`` labels under the same autocast, no tokenizer (latents out).

Networks at paper size without tokenizers: ``srdit_b1`` = SR-DiT-B/1 (SPRINT, REG, REPA) on 32×16×16 INVAE latents
(256 px), ``ditdh_s`` = RAE DiT^DH-S (LightningDiT-S + 2 × 2048 DDT head) on 768×16×16 DINOv2-B latents (256 px),
random weights (seeded alike on both sides).

Each side runs in its own process: the working tree (this script's checkout) and REV checked out in a temporary
``git worktree`` (removed at the end), each imported from its own folder — the layout before the house issue
(top-level ``lightning_modules``, flat recipe arguments) and the one after it (``speedrun_diffusion.*``, argument
groups) are both driven. Per row both processes build, warm up (``--warmup`` steps and one sample: compiling is
excluded), then take turns, the order alternating every round: ``--rounds`` rounds of ``--steps`` steps each, and
``--sample-rounds`` sample calls each. A side's time is the median over its rounds of the round's median step;
``step_time_ratio`` = working tree ÷ REV (time per step, < 1 is faster) and ``sampling_speedup`` = working tree ÷ REV
(images/s, > 1 is faster). Wall time decides; CPU time of the process (``cpu ratio``) is printed beside it, a check
on a shared machine where the wall clock also counts the other users' work.

The workers keep freed host memory as ``speedrun-diffusion`` does on CPU (``lightning_modules/host_memory.py``) when
their tree has that setting (8b0cc2d has not: glibc's defaults); ``--tree-host-memory off`` / ``--base-host-memory
off`` leave it out, so ``--baseline HEAD --base-host-memory off`` measures what it alone is worth.

Beside every time: the model FLOPs of the step / sample (``torch.utils.flop_counter`` on REV's eager step: the same
math on both sides; bf16 counts the explicit CPU attention matmuls), their rate as % of this machine's matmul peak
in the row's dtype (best 2048³ matmul, measured in this run before and after the rows), and each process's peak
RSS (``ru_maxrss``; a compile's worker processes are not counted). ``ratio at 100 % peak`` = the base's % of the
peak / 100 and ``sampling x at 100 % peak`` = 100 / the base's %: the best ratio and speed-up any code could reach
for the row's model FLOPs on this machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ("srdit_b1", "ditdh_s")
BATCHES = (2, 16)
PRECISIONS = ("fp32", "bf16")
EMA_DECAY = {"srdit_b1": 0.9999, "ditdh_s": 0.9995}  # configs/srdit/b1_256.yaml, configs/rae/stage2_ditdh_s_256.yaml
LIBRARY = ("lightning_modules", "callbacks", "datamodules")


# ===================================================================================================== worker side
def layout_of(tree: Path) -> str:
    """"grouped" when the tree installs under ``speedrun_diffusion`` with argument groups (after the house issue),
    "flat" for the earlier top-level packages with flat recipe arguments."""
    pyproject = (tree / "pyproject.toml").read_text() if (tree / "pyproject.toml").exists() else ""
    return "grouped" if "speedrun_diffusion.lightning_modules" in pyproject else "flat"


def import_tree(tree: Path, shim_dir: Path) -> dict:
    """Import the recipes and the EMA callback of ``tree`` (and nothing of any other checkout): a flat tree from
    ``sys.path[0]``, a grouped one through a ``speedrun_diffusion`` folder of links to the tree's packages."""
    layout = layout_of(tree)
    if layout == "grouped":
        package = shim_dir / "speedrun_diffusion"
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text("")
        for name in LIBRARY + ("configs",):
            link = package / name
            if (tree / name).exists() and not link.exists():
                link.symlink_to(tree / name, target_is_directory=True)
        sys.path.insert(0, str(shim_dir))
        prefix = "speedrun_diffusion."
    else:
        sys.path.insert(0, str(tree))
        prefix = ""
    import importlib

    recipes = importlib.import_module(prefix + "lightning_modules")
    callbacks = importlib.import_module(prefix + "callbacks")
    origin = Path(recipes.__file__).resolve()
    if tree.resolve() not in origin.parents:
        raise RuntimeError(f"imported {origin}, which is not in {tree}")
    try:  # the host-memory setting speedrun-diffusion applies on CPU (trees after 8b0cc2d)
        keep = importlib.import_module(prefix + "lightning_modules.host_memory").keep_freed_host_memory
    except ImportError:
        keep = None
    return {"layout": layout, "SRDiT": recipes.SRDiT, "RAEStage2": recipes.RAEStage2, "EMA": callbacks.EMA,
            "origin": str(origin), "keep_freed_host_memory": keep}


def import_this_checkout() -> dict:
    """``import_tree`` of this script's checkout for a script timing it in its own process (``weight_casts.py``,
    ``profile_step.py``), with freed host memory kept as ``speedrun-diffusion`` does on CPU; the folder of links is
    removed at exit."""
    import atexit
    import shutil

    shim = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, shim, ignore_errors=True)
    api = import_tree(ROOT, Path(shim))
    if api["keep_freed_host_memory"] is not None:
        api["keep_freed_host_memory"]()
    return api


# --tiny (a smoke test of the script, not a measurement): the same recipes with a few narrow blocks
TINY = {"srdit_b1": {"depth": 5, "hidden_size": 64, "num_heads": 2},
        "ditdh_s": {"depth": 2, "hidden_size": 64, "num_heads": 2, "head_hidden_size": 768, "head_num_heads": 2}}


def build_recipe(api: dict, network: str, compile_on: bool, tiny: bool = False):
    """The paper-size recipe without tokenizer / target encoder (cached latents, pre-computed targets)."""
    grouped = api["layout"] == "grouped"
    extra = {"compile": {"enabled": True}} if (compile_on and grouped) else {}
    extra.update(TINY[network] if tiny else {})
    if network == "srdit_b1":
        return api["SRDiT"](model="SiT-B/1", input_size=16, in_channels=32, num_classes=1000, **extra)
    if network == "ditdh_s":
        return api["RAEStage2"](model="DiTDH-S", head="G", head_depth=2, input_size=16, in_channels=768,
                                num_classes=1000, official_rae=False, **extra)
    raise ValueError(f"unknown network {network!r}; choose from {NETWORKS}")


def make_batch(network: str, batch: int):
    import torch

    g = torch.Generator().manual_seed(1234)
    if network == "srdit_b1":
        return {"latent": torch.randn(batch, 32, 16, 16, generator=g),
                "label": torch.randint(0, 1000, (batch,), generator=g),
                "repa_target": torch.nn.functional.normalize(torch.randn(batch, 257, 768, generator=g), dim=-1)}
    return {"latent": torch.randn(batch, 768, 16, 16, generator=g),
            "label": torch.randint(0, 1000, (batch,), generator=g)}


class Side:
    """One tree's recipe, batch, optimizer, scheduler and EMA, stepping as Lightning's automatic optimisation does."""

    def __init__(self, api: dict, network: str, batch: int, precision: str, compile_on: bool, sample_steps: int,
                 tiny: bool = False):
        import torch
        from lightning.pytorch.plugins.precision import Precision
        from lightning.pytorch.utilities.enums import GradClipAlgorithmType

        torch.manual_seed(0)
        self.torch = torch
        self.module = build_recipe(api, network, compile_on, tiny)
        self.module.configure_model()  # as Lightning does before fit (the working tree compiles here)
        self.module.train()
        self.batch = make_batch(network, batch)
        config = self.module.configure_optimizers()
        config = config if isinstance(config, dict) else {"optimizer": config[0][0], "lr_scheduler": config[1][0]}
        self.optimizer = config["optimizer"]
        scheduler = config.get("lr_scheduler")
        self.scheduler = scheduler["scheduler"] if isinstance(scheduler, dict) else scheduler
        self.ema = api["EMA"](decay=EMA_DECAY[network])
        self.clip = lambda: Precision().clip_gradients(self.optimizer, 1.0, GradClipAlgorithmType.NORM)
        self.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        self.labels = self.batch["label"].clone()
        self.sample_steps = sample_steps
        self.grouped = api["layout"] == "grouped"

    def step(self) -> None:
        """training_step → backward → clip → optimizer.step → scheduler.step → zero_grad → EMA (one global step)."""
        with self.autocast():
            loss = self.module.compute_losses(self.batch)["loss"]
        loss.backward()
        self.clip()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.module)

    def sample(self):
        """``sample()`` with the recipe's own sampler for the batch's labels, under the precision's autocast."""
        generator = self.torch.Generator().manual_seed(0)
        with self.autocast():
            return self.module.sample(self.labels, num_steps=self.sample_steps, generator=generator)

    def flops(self, fn) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def worker(args: argparse.Namespace) -> None:
    """Build one side, warm up, then answer the parent's commands (one JSON line each) on stdin / stdout."""
    import torch

    torch.set_num_threads(args.threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not mix with the protocol
    with tempfile.TemporaryDirectory() as shim:
        api = import_tree(Path(args.tree), Path(shim))
        keep = api["keep_freed_host_memory"] if args.host_memory == "on" else None
        host_memory = bool(keep and keep())
        start = time.perf_counter()
        side = Side(api, args.network, args.batch, args.precision, args.compile == "on", args.sample_steps, args.tiny)
        for _ in range(args.warmup):
            side.step()
        side.sample()
        reply = {"ready": True, "origin": api["origin"], "layout": api["layout"], "host_memory_kept": host_memory,
                 "warmup_s": time.perf_counter() - start,
                 "optimizer": type(side.optimizer).__name__ + str({k: side.optimizer.defaults.get(k)
                                                                   for k in ("fused", "foreach")})}
        if args.count_flops:
            reply["step_flops"] = side.flops(side.step)
            reply["sample_flops"] = side.flops(side.sample)
        print(json.dumps(reply), file=out, flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "steps":
                times = [timed(side.step) for _ in range(command["n"])]
                print(json.dumps({"wall": [t[0] for t in times], "cpu": [t[1] for t in times]}), file=out, flush=True)
            elif command["cmd"] == "sample":
                wall, cpu = timed(side.sample)
                print(json.dumps({"wall": [wall], "cpu": [cpu]}), file=out, flush=True)
            elif command["cmd"] == "rss":
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(json.dumps({"max_rss_mb": rss}), file=out, flush=True)
            else:
                break


# ===================================================================================================== parent side
def matmul_peak_tflops(dtype_name: str, threads: int) -> float:
    """This machine's practical matmul peak in ``dtype_name`` with ``threads`` threads (``timing.py``)."""
    import torch
    from timing import matmul_peak_tflops as best_matmul  # benchmarks/timing.py

    torch.set_num_threads(threads)
    return best_matmul(torch.bfloat16 if dtype_name == "bf16" else torch.float32)


class Worker:
    """A side's process and its line protocol."""

    def __init__(self, name: str, tree: Path, row: tuple[str, int, str], args: argparse.Namespace, compile_on: bool,
                 count_flops: bool, host_memory: str = "on") -> None:
        network, batch, precision = row
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--tree", str(tree), "--network", network,
                   "--batch", str(batch), "--precision", precision, "--threads", str(args.threads), "--warmup",
                   str(args.warmup), "--sample-steps", str(args.sample_steps), "--compile",
                   "on" if compile_on else "off", "--host-memory", host_memory] + \
                  (["--count-flops"] if count_flops else []) + \
                  (["--tiny"] if args.tiny else [])
        self.name = name
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        stderr=None if args.verbose else subprocess.DEVNULL, cwd=str(tree))

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker stopped (run with --verbose to see its output)")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.process.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.process.stdin.flush()
        with contextlib.suppress(Exception):
            self.process.wait(timeout=60)
        if self.process.poll() is None:
            self.process.kill()


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_row(row: tuple[str, int, str], base_tree: Path, args: argparse.Namespace) -> dict:
    """Both sides of one row, alternating; the row's numbers."""
    sides = {"tree": Worker("working-tree", ROOT, row, args, args.compile == "on", False, args.tree_host_memory),
             "base": Worker("baseline", base_tree, row, args, False, True, args.base_host_memory)}
    try:
        ready = {name: w.read() for name, w in sides.items()}
        rounds: dict[str, list[list[float]]] = {"tree": [], "base": []}
        cpu: dict[str, list[list[float]]] = {"tree": [], "base": []}
        for r in range(args.rounds):
            for name in (("tree", "base") if r % 2 == 0 else ("base", "tree")):
                answer = sides[name].ask(cmd="steps", n=args.steps)
                rounds[name].append(answer["wall"])
                cpu[name].append(answer["cpu"])
        samples: dict[str, list[float]] = {"tree": [], "base": []}
        sample_cpu: dict[str, list[float]] = {"tree": [], "base": []}
        for r in range(args.sample_rounds):
            for name in (("base", "tree") if r % 2 == 0 else ("tree", "base")):
                answer = sides[name].ask(cmd="sample")
                samples[name] += answer["wall"]
                sample_cpu[name] += answer["cpu"]
        rss = {name: w.ask(cmd="rss")["max_rss_mb"] for name, w in sides.items()}
    finally:
        for w in sides.values():
            w.close()
    step = {name: median([median(r) for r in rounds[name]]) for name in sides}
    step_cpu = {name: median([median(r) for r in cpu[name]]) for name in sides}
    sample = {name: median(samples[name]) for name in sides}
    network, batch, precision = row
    return {
        "network": network, "batch": batch, "precision": precision,
        "step_time_ratio": step["tree"] / step["base"],
        "sampling_speedup": sample["base"] / sample["tree"],
        "step_ms": {k: 1e3 * v for k, v in step.items()},
        "step_cpu_ratio": step_cpu["tree"] / step_cpu["base"],
        "paired_round_ratio": median([median(a) / median(b) for a, b in zip(rounds["tree"], rounds["base"])]),
        "step_gflops": ready["base"]["step_flops"] / 1e9,
        "sample_gflops": ready["base"]["sample_flops"] / 1e9,
        "images_per_s": {k: batch / v for k, v in sample.items()},
        "sample_cpu_speedup": median(sample_cpu["base"]) / median(sample_cpu["tree"]),
        "max_rss_mb": rss,
        "warmup_s": {k: v["warmup_s"] for k, v in ready.items()},
        "optimizer": {k: v["optimizer"] for k, v in ready.items()},
        "host_memory_kept": {k: v["host_memory_kept"] for k, v in ready.items()},
        "rounds_ms": {k: [[1e3 * t for t in r] for r in v] for k, v in rounds.items()},
    }


def parse_rows(specs: list[str] | None) -> list[tuple[str, int, str]]:
    if not specs:
        return [(n, b, p) for n in NETWORKS for b in BATCHES for p in PRECISIONS]
    rows = []
    for spec in specs:
        network, batch, precision = spec.split(":")
        if network not in NETWORKS or precision not in PRECISIONS:
            raise SystemExit(f"bad row {spec!r}: NETWORK:BATCH:PRECISION with NETWORK in {NETWORKS}, PRECISION in "
                             f"{PRECISIONS}")
        rows.append((network, int(batch), precision))
    return rows


@contextlib.contextmanager
def checkout(rev: str):
    """REV in a temporary ``git worktree`` (detached), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="step_vs_commit_"))
    tree = folder / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True, text=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="git revision to compare against (e.g. 8b0cc2d)")
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list on the last line")
    parser.add_argument("--rows", nargs="+", help="NETWORK:BATCH:PRECISION, e.g. srdit_b1:2:bf16 (default: all 8)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of timed steps per side")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiling happens here)")
    parser.add_argument("--sample-steps", type=int, default=5, help="sampler steps of one timed sample() call")
    parser.add_argument("--sample-rounds", type=int, default=3, help="alternating timed sample() calls per side")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of both sides")
    parser.add_argument("--compile", choices=["on", "off"], default="on", help="the working tree's compile group")
    parser.add_argument("--tree-host-memory", choices=["on", "off"], default="on",
                        help="the working tree keeps freed host memory (lightning_modules/host_memory.py) or not")
    parser.add_argument("--base-host-memory", choices=["on", "off"], default="on",
                        help="the same for REV, if it has host_memory.py (8b0cc2d has not)")
    parser.add_argument("--verbose", action="store_true", help="show the workers' output")
    parser.add_argument("--tiny", action="store_true",
                        help="narrow networks: a smoke test of the script, no measurement")
    # worker side (internal)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--network", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host-memory", default="on", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.baseline:
        parser.error("--baseline REV is required")
    rows = parse_rows(args.rows)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                         capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    peaks = {p: matmul_peak_tflops(p, args.threads) for p in PRECISIONS}
    import torch

    print(f"working tree {ROOT} at {head}{' + uncommitted changes' if dirty else ''} against {rev}; torch "
          f"{torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M')}",
          flush=True)
    print(f"per row: {args.warmup} warm-up steps + 1 sample, then {args.rounds} alternating rounds × {args.steps} "
          f"steps and {args.sample_rounds} × sample() of {args.sample_steps} steps per side; working tree compile "
          f"{args.compile}; host memory kept: working tree {args.tree_host_memory}, base {args.base_host_memory} "
          "(if it has host_memory.py)", flush=True)
    results = []
    with checkout(rev) as base_tree:
        for row in rows:
            result = run_row(row, base_tree, args)
            results.append(result)
            print(f"  {row[0]} batch {row[1]} {row[2]}: step {result['step_ms']['tree']:.0f} / "
                  f"{result['step_ms']['base']:.0f} ms = {result['step_time_ratio']:.3f}, sampling "
                  f"{result['sampling_speedup']:.2f}x", flush=True)
    for p in PRECISIONS:  # the peak again after the rows: the better of the two
        peaks[p] = max(peaks[p], matmul_peak_tflops(p, args.threads))
    for r in results:
        peak = peaks[r["precision"]]
        r["matmul_peak_tflops"] = peak
        r["step_pct_peak"] = {k: 100 * r["step_gflops"] / 1e3 / (v / 1e3) / peak for k, v in r["step_ms"].items()}
        sample_s = {k: r["batch"] / v for k, v in r["images_per_s"].items()}
        r["sample_pct_peak"] = {k: 100 * r["sample_gflops"] / 1e3 / v / peak for k, v in sample_s.items()}
        # the best any tree could do: its step / sample at 100 % of the matmul peak, against the base as measured
        r["step_ratio_floor"] = r["step_pct_peak"]["base"] / 100
        r["sampling_speedup_ceiling"] = 100 / r["sample_pct_peak"]["base"]
    from tables import print_table  # benchmarks/tables.py

    print(f"\nmatmul peak (best 2048³, {args.threads} threads): fp32 {peaks['fp32']:.3f}, bf16 {peaks['bf16']:.3f} "
          "TFLOP/s; tree = working tree, base = " + rev)
    header = ["network", "batch", "precision", "step ms tree", "step ms base", "ratio", "cpu ratio", "GFLOPs/step",
              "% peak tree", "% peak base", "ratio at 100 % peak", "RSS MB tree", "RSS MB base", "img/s tree",
              "img/s base", "sampling x", "% peak tree (sample)", "% peak base (sample)", "sampling x at 100 % peak"]
    table = [[r["network"], r["batch"], r["precision"], f"{r['step_ms']['tree']:.0f}", f"{r['step_ms']['base']:.0f}",
              f"{r['step_time_ratio']:.3f}", f"{r['step_cpu_ratio']:.3f}", f"{r['step_gflops']:.1f}",
              f"{r['step_pct_peak']['tree']:.1f}", f"{r['step_pct_peak']['base']:.1f}", f"{r['step_ratio_floor']:.3f}",
              f"{r['max_rss_mb']['tree']:.0f}", f"{r['max_rss_mb']['base']:.0f}", f"{r['images_per_s']['tree']:.2f}",
              f"{r['images_per_s']['base']:.2f}", f"{r['sampling_speedup']:.2f}", f"{r['sample_pct_peak']['tree']:.1f}",
              f"{r['sample_pct_peak']['base']:.1f}", f"{r['sampling_speedup_ceiling']:.2f}"] for r in results]
    print_table(header, table, markdown=True)
    if args.json:
        print(json.dumps(results))


sys.path.insert(0, str(Path(__file__).resolve().parent))
if __name__ == "__main__":
    main()
