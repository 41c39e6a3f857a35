"""Launched by test_sharded_recipes.py, once per recipe: ``python sharded_recipes_run.py OUT CONFIG [CLI overrides]``.

The recipe and its data come from CONFIG (a configs/<recipe>/tiny_cpu.yaml) through the project's CLI parser,
shrunk by the overrides; fp32, deterministic. Three fits, results saved to OUT by rank 0:

1. ``reference``: one process, global batch 2·b, each step's loss the mean of the two half batches that the two
   ranks would see, each half drawing its noise from the torch stream that rank would have (emulated);
2. ``sharded``: FSDP2 (ModelParallelStrategy, gloo) on 2 processes, per-device batch b, EMA, a sharded
   (distributed checkpoint) save every ``SAVE_AT`` steps;
3. ``resumed``: 2 processes again, resumed from the step-``SAVE_AT`` checkpoint to the same end.

Lightning's launcher re-runs this script for rank 1 (LOCAL_RANK set), which skips the single-process part.
No tests here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from speedrun_diffusion.callbacks.checkpointing import AtomicModelCheckpoint  # noqa: E402
from speedrun_diffusion.callbacks.ema import EMA  # noqa: E402
from speedrun_diffusion.lightning_modules.cli import build_cli  # noqa: E402
from speedrun_diffusion.lightning_modules.compilation import is_compiled  # noqa: E402
from speedrun_diffusion.lightning_modules.process_group import leave_process_group  # noqa: E402
from speedrun_diffusion.lightning_modules.recipe import decorrelate_rank_rng  # noqa: E402
from tests.helpers.toy_recipe import full_parameters  # noqa: E402

STEPS, SAVE_AT, WORLD, SEED, EMA_DECAY = 4, 2, 2, 1234, 0.9
BATCH = 4  # per device; the reference's global batch is WORLD × BATCH


def build(config: str, overrides: list[str], batch_size: int, root: Path) -> tuple[L.LightningModule, Any, float]:
    """Recipe, datamodule and the config's gradient clipping value, through the CLI parser (seeded by the config)."""
    args = ["--config", config, *overrides, f"--data.init_args.batch_size={batch_size}", "--trainer.logger=false",
            f"--trainer.default_root_dir={root}"]
    cli = build_cli(args, run=False)
    return cli.model, cli.datamodule, cli.trainer.gradient_clip_val


class Record(L.Callback):
    """Per-step loss and batch labels of this rank; a fixed torch stream at the start of a fresh fit (the recipe's
    own ``on_train_start`` runs after this and gives rank 1 its own stream)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.labels: list[list[int]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            torch.manual_seed(SEED)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.labels.append(batch["label"].tolist())


class EmulateRanks(L.Callback):
    """Single process: split each global batch as the ranks would (rank r takes items r, r + W, …) and compute
    each half with the torch stream rank r would have; the step's loss is the mean (= FSDP's gradient average)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        states = []
        for rank in range(WORLD):
            torch.manual_seed(SEED)
            decorrelate_rank_rng(rank)
            states.append(torch.get_rng_state())

        current, shared = [0], {}
        path_drop = getattr(pl_module, "_path_drop", None)
        if path_drop is not None:  # SR-DiT: every rank draws, rank 0's decision is broadcast to all
            def broadcast_path_drop(generator=None):
                mine = path_drop(generator)
                if current[0] == 0:
                    shared["decision"] = mine
                return shared["decision"]

            pl_module._path_drop = broadcast_path_drop

        def halves_loss(batch: dict) -> tuple[torch.Tensor, list]:
            total, extras = 0.0, []
            for rank in range(WORLD):
                current[0] = rank
                torch.set_rng_state(states[rank])
                half = {k: v[rank::WORLD] if torch.is_tensor(v) else v for k, v in batch.items()}
                total = total + pl_module.compute_losses(half)["loss"]
                extras.append(getattr(pl_module, "_reconstruction", None))
                states[rank] = torch.get_rng_state()
            return total / WORLD, extras

        def training_step(batch: dict, batch_idx: int) -> torch.Tensor:
            return halves_loss(batch)[0]

        def manual_training_step(batch: dict, batch_idx: int) -> torch.Tensor:
            """SpeedDiff: the joint step on the mean of the halves' losses, then the discriminator step on the
            global batch with the halves' reconstructions put back in place (every discriminator term is a mean
            over equal halves, and LeCam averages the logit means over ranks, so this equals the ranks' step)."""
            from speedrun_diffusion.lightning_modules.losses.speeddiff_loss import speeddiff_discriminator_losses

            optimizers, schedulers = pl_module.optimizers(), pl_module.lr_schedulers()
            loss, recon = halves_loss(batch)
            pl_module.manual_optimizer_step(optimizers[0], loss, True)
            schedulers[0].step()
            if pl_module.gan_phase.disc and pl_module.discriminator is not None:
                fake = torch.empty_like(batch["image"])
                for rank in range(WORLD):
                    fake[rank::WORLD] = recon[rank]
                pl_module.discriminator.train()
                d = speeddiff_discriminator_losses(pl_module.discriminator, batch["image"], fake, pl_module.lecam,
                                                   pl_module.weights.lecam, pl_module.d_loss_fn)
                pl_module.manual_optimizer_step(optimizers[1], d["d_loss"], False)
                schedulers[1].step()
            return loss.detach()

        pl_module.training_step = training_step if pl_module.automatic_optimization else manual_training_step


def fit(module: L.LightningModule, data: Any, clip: float, world: int, callbacks: list, root: Path,
        ckpt_path: str | None = None) -> None:
    strategy = ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1) if world > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy=strategy, max_steps=STEPS, precision="32-true",
                        gradient_clip_val=clip, deterministic=True, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=any(
                            isinstance(c, AtomicModelCheckpoint) for c in callbacks),
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root, callbacks=callbacks)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)


def autoguided_samples(module: L.LightningModule) -> torch.Tensor:
    """Samples of the trained module autoguided (scale 2) by a guide built from its hyper-parameters with a fixed
    seed — the same replicated guide on every process; collective under sharding (every rank samples)."""
    torch.manual_seed(4321)
    guide = type(module).net_from_hparams(dict(module.hparams))
    for p in guide.parameters():  # non-zero outputs (adaLN-zero / identity inits make a fresh guide trivial)
        p.data.normal_(0, 0.02)
    module.set_autoguide(guide, 2.0)
    try:
        labels = torch.arange(2) % module.num_classes
        return module.sample(labels, num_steps=2, generator=torch.Generator().manual_seed(0)).detach().float()
    finally:
        module.set_autoguide(None)


def summary(module: L.LightningModule, record: Record, ema: EMA | None, world: int) -> dict[str, Any]:
    """Every rank's losses and labels, full (gathered) final weights and EMA; collective under sharding."""
    losses, labels = [record.losses], [record.labels]
    if world > 1:
        losses, labels = [None] * world, [None] * world
        torch.distributed.all_gather_object(losses, record.losses)
        torch.distributed.all_gather_object(labels, record.labels)
    trained = {"net": module.net, **{name: m for name, m in (("tokenizer", module.tokenizer),
               ("discriminator", getattr(module, "discriminator", None))) if m is not None and any(
               p.requires_grad for p in m.parameters())}}
    params = {f"{prefix}.{k}": v for prefix, m in trained.items() for k, v in full_parameters(m).items()}
    buffers = {f"lecam.{k}": v.detach().clone().float() for k, v in module.lecam.named_buffers()} \
        if getattr(module, "lecam", None) is not None else {}
    if world > 1 and buffers:  # every rank must hold the same anchors (a checkpoint keeps one copy)
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, buffers)
        assert all(all(torch.equal(g[k], buffers[k]) for k in buffers) for g in gathered), "LeCam anchors differ"
    return {"losses": losses, "labels": labels, "params": {**params, **buffers},
            "ema": ema.full_state(module) if ema is not None else None,
            "param_type": type(next(module.net.parameters())).__name__, "guided": autoguided_samples(module),
            "compiled": any(is_compiled(m) for m in module.net.modules()),
            "gan_phase": [bool(v) for v in vars(module.gan_phase).values()] if hasattr(module, "gan_phase") else None}


def gan_warmup(module: L.LightningModule) -> list[L.Callback]:
    """GAN recipes: LPIPS from step 0, discriminator from step 1, adversarial from step 3 — the phase changes across
    the resume point, so the resumed run must restore it."""
    from speedrun_diffusion.callbacks.gan_warmup import GANWarmup

    return [GANWarmup(0, 1, 3, unit="step")] if hasattr(module, "gan_phase") else []


def prepare_rae_stage2(work: Path) -> None:
    """RAE stage 2 trains on stage 1's outputs: a 2-step tiny stage-1 fit, then its latent cache and statistics
    (docs/recipes/rae.md), written under ``work`` (the relative paths of the tiny configs)."""
    configs = ROOT / "configs" / "rae"
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    small = ["--data.init_args.train_size=64", "--data.init_args.val_size=8"]
    build_cli(["fit", "--config", str(configs / "tiny_cpu_stage1.yaml"), "--trainer.max_steps=2",
               "--trainer.limit_val_batches=0", *small, *quiet])
    build_cli(["predict", "--config", str(configs / "tiny_cpu_stage1.yaml"), "--config",
               str(configs / "chain" / "tiny_cpu_cache.yaml"), "--ckpt_path",
               str(work / "runs/rae_tiny_cpu/stage1/checkpoints/last.ckpt"), "--return_predictions=false",
               "--data.init_args.source.init_args.train_size=64", *quiet])


def main(out: str, config: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    root = Path(out).parent / "run"
    config = str(ROOT / config)
    os.chdir(Path(out).parent)  # relative paths of the configs (runs/...) land beside OUT
    result: dict[str, Any] = {}
    if "LOCAL_RANK" not in os.environ and "rae" in Path(config).parts:
        prepare_rae_stage2(Path.cwd())
    if "LOCAL_RANK" not in os.environ:  # the launching process, before the launcher starts rank 1
        module, data, clip = build(config, overrides, 2 * BATCH, root)
        record = Record()
        fit(module, data, clip, 1, [record, EmulateRanks(), *gan_warmup(module)], root)
        result["reference"] = summary(module, record, None, 1)
        result["clip"] = clip

    module, data, clip = build(config, overrides, BATCH, root)
    record, ema = Record(), EMA(decay=EMA_DECAY)
    saver = AtomicModelCheckpoint(dirpath=root / "ckpt", filename="{step}", every_n_train_steps=SAVE_AT,
                                  save_top_k=-1, save_last=False)
    fit(module, data, clip, WORLD, [record, ema, saver, *gan_warmup(module)], root)
    result["sharded"] = summary(module, record, ema, WORLD)
    result["checkpoint_is_directory"] = (root / "ckpt" / f"step={SAVE_AT}.ckpt").is_dir()

    module, data, clip = build(config, overrides, BATCH, root)
    record, ema = Record(), EMA(decay=EMA_DECAY)
    fit(module, data, clip, WORLD, [record, ema, *gan_warmup(module)], root,
        ckpt_path=str(root / "ckpt" / f"step={SAVE_AT}.ckpt"))
    result["resumed"] = summary(module, record, ema, WORLD)
    if torch.distributed.get_rank() == 0:
        torch.save(result, out)
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
