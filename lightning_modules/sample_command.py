"""``speedrun-diffusion sample``: images from a trained recipe, as a PNG grid and an ADM sample batch (``.npz``).

    speedrun-diffusion sample --ckpt_path runs/sid2_tiny_cpu/checkpoints/last.ckpt --output_dir samples/sid2 \\
        --num_samples 50000 --batch_size 250 --num_steps 512 --guidance_scale 2.0
    torchrun --nproc_per_node 8 -m speedrun_diffusion.lightning_modules.cli sample ...   # sharded over ranks

The model comes from a training checkpoint (file or sharded folder: the recipe and its hyper-parameters are in it)
or a bundle (``serving.load_pretrained``), with its EMA weights unless ``--raw_weights``. Batch b draws its noise
from a generator seeded by (seed, b) and its labels from the balanced label list (or ``--classes``), so the images
do not depend on the number of ranks or on interruptions: each batch is written to ``chunks/`` atomically, an
interrupted run started again with the same arguments resumes at the first missing batch, and rank 0 writes
``samples.npz`` (``arr_0`` uint8 NHWC, ``arr_1`` labels — the writer ``Evaluation`` uses) and ``grid.png``.
``--compile`` compiles the denoiser (and the tokenizer's encoder / decoder) with the options of the recipe's
``compile`` group before the first batch: worth its minutes of compiling for many batches; the images equal the eager
ones up to float rounding (a uint8 level in a few pixels), so a resumed run may switch it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speedrun_diffusion.callbacks.image_protocol import balanced_labels, nchw_to_nhwc, quantize, write_npz
from speedrun_diffusion.callbacks.samples import image_grid
from speedrun_diffusion.lightning_modules import diffusion
from speedrun_diffusion.lightning_modules.compilation import compile_modules
from speedrun_diffusion.lightning_modules.host_memory import keep_freed_host_memory
from speedrun_diffusion.lightning_modules.process_group import leave_process_group
from speedrun_diffusion.lightning_modules.rae_stage1 import RAEStage1
from speedrun_diffusion.lightning_modules.serving import load_pretrained, save_pretrained

__all__ = ["build_parser", "main", "run"]

SAMPLERS = ("EulerODE", "Heun", "EulerMaruyama", "DDPM")
# arguments that change the images: a resumed run must use the same ones as the chunks already written
GENERATION_ARGS = ("ckpt_path", "num_samples", "batch_size", "classes", "num_steps", "guidance_scale",
                   "guidance_interval", "sampler", "sampler_args", "seed", "raw_weights", "precision", "quantization")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speedrun-diffusion sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="training checkpoint (file or sharded folder) or bundle")
    parser.add_argument("--output_dir", required=True, help="where chunks/, samples.npz and grid.png go")
    parser.add_argument("--num_samples", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--classes", default=None, help="comma-separated labels, cycled (default: every class, "
                                                        "balanced; the null class num_classes is unconditional)")
    parser.add_argument("--num_steps", type=int, default=None, help="default: the recipe's sampling.num_steps")
    parser.add_argument("--guidance_scale", type=float, default=None, help="w; 1 = no guidance; default: configured")
    parser.add_argument("--guidance_interval", default=None, help='"low,high", "auto" (the paper\'s) or "all"')
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the recipe's sampling.sampler")
    parser.add_argument("--sampler_args", default=None, help='JSON of the sampler\'s fields, e.g. \'{"gamma": 0.5}\'')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw_weights", action="store_true", help="the raw network weights instead of the EMA's")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument("--quantization", choices=("truncate", "round"), default="truncate")
    parser.add_argument("--device", default=None, help="default: cuda (this rank's) if available, else cpu")
    parser.add_argument("--grid_samples", type=int, default=64, help="images in grid.png (0: none)")
    parser.add_argument("--save_bundle", default=None, help="also write the loaded model as a bundle there")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser and tokenizer first "
                                                               "(the recipe's compile options)")
    return parser


def _sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if args.num_steps is not None:
        kwargs["num_steps"] = args.num_steps
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    if args.guidance_interval is not None:
        value = args.guidance_interval.strip()
        kwargs["guidance_interval"] = value if value in ("auto", "all") else tuple(float(v) for v in value.split(","))
    if args.sampler is not None:
        fields = json.loads(args.sampler_args) if args.sampler_args else {}
        kwargs["sampler"] = getattr(diffusion, args.sampler)(**fields)
    elif args.sampler_args:
        raise SystemExit("speedrun-diffusion sample: error: --sampler_args needs --sampler")
    return kwargs


def _labels(args: argparse.Namespace, num_classes: int) -> torch.Tensor:
    if args.classes is None:
        return balanced_labels(args.num_samples, num_classes)
    chosen = [int(c) for c in args.classes.split(",") if c.strip()]
    bad = [c for c in chosen if not 0 <= c <= num_classes]
    if not chosen or bad:
        raise SystemExit(f"speedrun-diffusion sample: error: --classes must be labels in [0, {num_classes}] "
                         f"({num_classes} = unconditional), got {args.classes!r}")
    return torch.tensor([chosen[i % len(chosen)] for i in range(args.num_samples)])


def _read_chunk(path: Path, count: int) -> np.ndarray | None:
    """The images of a finished chunk, or None if it is missing or unreadable (then it is sampled again)."""
    try:
        with np.load(path) as data:
            images = data["images"]
        return images if len(images) == count else None
    except (OSError, ValueError, KeyError):
        return None


def run(argv: list[str]) -> Path:
    """Parse ``argv`` (the arguments after ``sample``), sample this rank's missing batches, and (rank 0) write
    ``samples.npz`` and ``grid.png``; returns the output folder."""
    args = build_parser().parse_args(argv)
    if args.num_samples < 1 or args.batch_size < 1:
        raise SystemExit("speedrun-diffusion sample: error: --num_samples and --batch_size must be >= 1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    device = torch.device(args.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
                                          if torch.cuda.is_available() else "cpu"))
    out = Path(args.output_dir)
    chunks = out / "chunks"
    settings = {k: getattr(args, k) for k in GENERATION_ARGS}
    record = out / "sample_args.json"
    if rank == 0:
        chunks.mkdir(parents=True, exist_ok=True)
        if record.is_file() and json.loads(record.read_text()) != settings:
            raise SystemExit(f"speedrun-diffusion sample: error: {out} holds samples made with other arguments "
                             f"({record}); choose another --output_dir or delete it")
        record.write_text(json.dumps(settings, indent=2))
    if world > 1:
        torch.distributed.barrier()

    if device.type == "cpu":
        keep_freed_host_memory()  # no page faults per sampler step (host_memory.py)
    model = load_pretrained(args.ckpt_path, use_ema=not args.raw_weights, map_location=device)
    if isinstance(model, RAEStage1):
        raise SystemExit("speedrun-diffusion sample: error: RAEStage1 is an autoencoder (it reconstructs images); "
                         "sample its stage-2 model")
    if args.save_bundle and rank == 0:
        save_pretrained(model, args.save_bundle)
    if args.compile:
        compile_modules(model.compiled_modules(), dataclasses.replace(model.compile_config, enabled=True))
    labels = _labels(args, model.num_classes)
    kwargs = _sampling_kwargs(args)
    batches = math.ceil(args.num_samples / args.batch_size)
    mine = [b for b in range(batches) if b % world == rank]
    from tqdm.auto import tqdm

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    for b in tqdm(mine, desc=f"sampling (rank {rank})", disable=rank != 0, unit="batch"):
        start, count = b * args.batch_size, min(args.batch_size, args.num_samples - b * args.batch_size)
        path = chunks / f"{b:06d}.npz"
        if _read_chunk(path, count) is not None:
            continue  # written by an earlier, interrupted run
        generator = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + b)
        with autocast:
            images = model.sample(labels[start:start + count], generator=generator, **kwargs)
        uint8 = nchw_to_nhwc(quantize(images.float(), args.quantization)).cpu().numpy()
        with open(path.with_suffix(".tmp"), "wb") as f:  # renamed when complete: a kill leaves no half chunk
            np.savez(f, images=uint8)
        os.replace(path.with_suffix(".tmp"), path)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        parts = [chunks / f"{b:06d}.npz" for b in range(batches)]
        counts = [min(args.batch_size, args.num_samples - b * args.batch_size) for b in range(batches)]
        write_npz(out / "samples.npz", (_read_chunk(p, n) for p, n in zip(parts, counts)),
                  num_images=args.num_samples, labels=labels.numpy())
        if args.grid_samples > 0:
            from torchvision.utils import save_image

            first = np.load(out / "samples.npz")["arr_0"][: args.grid_samples]
            grid = image_grid(torch.from_numpy(first).permute(0, 3, 1, 2).float() / 127.5 - 1,
                              nrow=min(model.num_classes, 10, len(first)))
            save_image(grid, out / "grid.png")
        print(f"{args.num_samples} samples of {type(model).__name__} ({'EMA' if model.uses_ema else 'raw'} weights, "
              f"step {model.trained_steps}) in {out / 'samples.npz'}")
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry: ``speedrun-diffusion sample ...``."""
    run(list(sys.argv[2:] if argv is None else argv))
    leave_process_group()
