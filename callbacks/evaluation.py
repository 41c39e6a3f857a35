"""`Evaluation`: FID, sFID, IS, precision/recall, KDD of generated samples (and rFID, PSNR, SSIM of
reconstructions) over all ranks, computed the way the papers compute them (metrics README §2, §4).

Generation. Sample k (k = 0 .. num_samples - 1) has label ``k mod num_classes`` (SR-DiT
``generate.py``: 50 per class for 50K). The samples are cut into *global* batches of
``batch_size``; batch j is drawn by ``pl_module.sample`` with a generator seeded from (seed, j) and
with the EMA weights when an `EMA` callback is present. Ranks take contiguous runs of batches
(disjoint index, hence label, ranges), so the images, and every metric, depend on the seed only,
not on the number of ranks. Under FSDP2 every rank runs the same number of ``sample`` calls (a
rank with no batch left draws a discarded one-image batch) because sharded forwards are collective.

Features. Each rank quantises its samples to uint8 (truncation by default, README §2) and runs the
extractors on them: `InceptionFeatures` (pool_3 → FID, precision/recall; logits_unbiased → IS;
spatial → sFID) and, for KDD, `DINOv2Features`. The metric states are gathered once, in
``compute``. Reference side: an ADM reference ``.npz`` (``mu``/``sigma``, ``mu_s``/``sigma_s`` used
as stored; ``arr_0`` images for precision/recall and KDD), or the first ``num_reference`` images of
the validation dataset (uint8 → [-1, 1] data are mapped back exactly with rounding). Reference
features are extracted once and cached per rank.

Reconstructions (``rfid``, ``psnr``, ``ssim``): during validation every batch is passed through
``pl_module.reconstruct(images)`` (or ``decode(encode(images))``), originals and reconstructions
are quantised and compared; values are gathered at the end of the epoch.

Values are logged (TensorBoard via the trainer's loggers, and the progress bar) as
``<prefix><name>``, printed as a table on rank 0, and kept in ``last_results``.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from speedrun_diffusion.callbacks.ema import EMA
from speedrun_diffusion.callbacks.features.base import FeatureExtractor
from speedrun_diffusion.callbacks.image_protocol import (
    Quantization,
    balanced_labels,
    load_reference_npz,
    nchw_to_nhwc,
    nhwc_to_nchw,
    quantize,
    write_npz,
)
from speedrun_diffusion.callbacks.metrics import FID, KDD, PSNR, RFID, SFID, SSIM, InceptionScore, PrecisionRecall
from speedrun_diffusion.lightning_modules.eval_mode import eval_mode

GENERATION_METRICS = ("fid", "sfid", "is", "precision_recall", "kdd")
RECONSTRUCTION_METRICS = ("rfid", "psnr", "ssim")
INCEPTION_METRICS = {"fid": "pool_3", "sfid": "spatial", "is": "logits_unbiased", "precision_recall": "pool_3",
                     "rfid": "pool_3"}


def _is_sharded(module: nn.Module) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(p, DTensor) for p in module.parameters())


def rank_batches(num_samples: int, batch_size: int, world_size: int, rank: int) -> tuple[list[int], int]:
    """(global batch ids of ``rank``, number of calls every rank makes): contiguous runs of batches."""
    num_batches = math.ceil(num_samples / batch_size)
    per_rank = math.ceil(num_batches / world_size)
    start = rank * per_rank
    return list(range(start, min(start + per_rank, num_batches))), per_rank


class Evaluation(L.Callback):
    """Paper-comparable evaluation of a diffusion recipe; see the module docstring.

    Args:
        metrics: any of "fid", "sfid", "is", "precision_recall", "kdd" (generation) and "rfid",
            "psnr", "ssim" (reconstruction, for autoencoders).
        num_samples: generated images (50,000 for "FID-50K").
        batch_size: global sampling batch (fixes the noise of each sample; keep it when comparing runs).
        every_n_steps: also evaluate every N optimizer steps during fit (None: only at validation end).
        on_validation: evaluate at the end of every validation epoch (``validate`` always evaluates).
        reference: ADM reference batch ``.npz`` (e.g. ``VIRTUAL_imagenet256_labeled.npz``); None uses
            the validation dataset's images.
        num_reference: at most this many validation images as the reference (None: all).
        num_steps / sample_kwargs: forwarded to ``pl_module.sample`` (guidance_scale, guidance_interval, sampler, ...).
        seed: seed of the sampling noise.
        quantization: "truncate" (seed papers) or "round" (EDM2) for samples and reconstructions.
        npz_path: if set, write the samples there as an ADM sample batch (``arr_0``, ``arr_1`` labels).
        inception_weights / dinov2_weights: local weight files (None: torch-fidelity / timm download).
        inception / dinov2: injected `FeatureExtractor`s (tests, custom networks).
        is_rule: "adm" (chunks of 5,000) or "torch_fidelity".
        kdd_subsets / kdd_subset_size / kdd_seed: dgm-eval's subset draw.
        prefix: logged names are ``prefix + name``.
        progress: tqdm bars (rank 0) over sampling and feature extraction.
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("fid", "sfid", "is", "precision_recall"),
        num_samples: int = 50_000,
        batch_size: int = 64,
        every_n_steps: int | None = None,
        on_validation: bool = True,
        reference: str | None = None,
        num_reference: int | None = None,
        num_steps: int | None = None,
        sample_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        quantization: Quantization = "truncate",
        npz_path: str | None = None,
        inception_weights: str | None = None,
        dinov2_weights: str | None = None,
        inception: FeatureExtractor | None = None,
        dinov2: FeatureExtractor | None = None,
        is_rule: str = "adm",
        kdd_subsets: int = 100,
        kdd_subset_size: int = 1000,
        kdd_seed: int = 13579,
        prefix: str = "eval/",
        progress: bool = True,
    ) -> None:
        unknown = set(metrics) - set(GENERATION_METRICS) - set(RECONSTRUCTION_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from "
                             f"{list(GENERATION_METRICS) + list(RECONSTRUCTION_METRICS)}")
        if num_samples < 2 or batch_size < 1:
            raise ValueError(f"need num_samples >= 2 and batch_size >= 1, got {num_samples}, {batch_size}")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        if quantization not in ("truncate", "round"):
            raise ValueError(f"quantization must be 'truncate' or 'round', got {quantization!r}")
        self.metrics = tuple(metrics)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.every_n_steps = every_n_steps
        self.on_validation = on_validation
        self.reference = reference
        self.num_reference = num_reference
        self.num_steps = num_steps
        self.sample_kwargs = dict(sample_kwargs or {})
        self.seed = seed
        self.quantization = quantization
        self.npz_path = npz_path
        self.inception_weights = inception_weights
        self.dinov2_weights = dinov2_weights
        self._inception = inception
        self._dinov2 = dinov2
        self.is_rule = is_rule
        self.kdd_subsets = kdd_subsets
        self.kdd_subset_size = kdd_subset_size
        self.kdd_seed = kdd_seed
        self.prefix = prefix
        self.progress = progress
        self.last_results: dict[str, float] = {}
        self._real_cache: dict[str, Tensor] | None = None  # this rank's reference features
        self._real_indices: Tensor | None = None
        self._recon_metrics: dict[str, Any] | None = None
        self._last_step = -1

    # ------------------------------------------------------------------ what is needed
    @property
    def generation_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in GENERATION_METRICS)

    @property
    def reconstruction_metrics(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m in RECONSTRUCTION_METRICS)

    def inception(self, device: torch.device) -> FeatureExtractor:
        if self._inception is None:
            from speedrun_diffusion.callbacks.features import InceptionFeatures

            self._inception = InceptionFeatures(weights=self.inception_weights)
        return self._inception.to(device)

    def dinov2(self, device: torch.device) -> FeatureExtractor:
        if self._dinov2 is None:
            from speedrun_diffusion.callbacks.features import DINOv2Features

            self._dinov2 = DINOv2Features(weights=self.dinov2_weights)
        return self._dinov2.to(device)

    def _features(self, images: Tensor, device: torch.device, names: Sequence[str]) -> dict[str, Tensor]:
        """The features ``names`` need from uint8 NCHW images (one Inception pass serves them all)."""
        out: dict[str, Tensor] = {}
        if any(n in INCEPTION_METRICS for n in names):
            out.update(self.inception(device)(images))
        if "kdd" in names:
            out.update(self.dinov2(device)(images))
        return out

    def batch_generator(self, batch_id: int, device: torch.device) -> torch.Generator:
        """The generator of global batch ``batch_id``: a function of (seed, batch) only."""
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + batch_id)

    # ------------------------------------------------------------------ reference side
    def _reference_images(self, trainer: L.Trainer, rank: int, world: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(uint8 NCHW images, global indices) of this rank's contiguous share of the reference images."""
        if self.reference is not None:
            batch = load_reference_npz(self.reference, required=("arr_0",))
            assert batch.images is not None
            images = batch.images[: self.num_reference] if self.num_reference else batch.images
            lo, hi = _share(len(images), rank, world)
            for i in range(lo, hi, self.batch_size):
                j = min(i + self.batch_size, hi)
                yield nhwc_to_nchw(torch.from_numpy(np.ascontiguousarray(images[i:j]))), torch.arange(i, j)
            return
        dataset = _validation_dataset(trainer)
        total = len(dataset) if self.num_reference is None else min(self.num_reference, len(dataset))
        lo, hi = _share(total, rank, world)
        for i in range(lo, hi, self.batch_size):
            j = min(i + self.batch_size, hi)
            images = torch.stack([_image_of(dataset[k]) for k in range(i, j)])
            # data came from uint8 by x / 127.5 - 1: rounding maps it back exactly, truncation may not
            yield quantize(images, "round"), torch.arange(i, j)

    def _prepare_reference(self, trainer: L.Trainer, device: torch.device) -> dict[str, Tensor]:
        needs = {INCEPTION_METRICS[m] for m in self.generation_metrics if m in INCEPTION_METRICS}
        if self.reference is not None:
            stored = load_reference_npz(self.reference)
            # ADM uses stored statistics when present and never recomputes them from arr_0
            if stored.mu is not None and "precision_recall" not in self.generation_metrics:
                needs.discard("pool_3")
            if stored.mu_s is not None:
                needs.discard("spatial")
        needs.discard("logits_unbiased")  # IS has no reference side
        if "kdd" in self.generation_metrics:
            needs.add("dinov2")
        if self._real_cache is not None and needs <= set(self._real_cache):
            return self._real_cache
        cache: dict[str, list[Tensor]] = {n: [] for n in needs}
        indices: list[Tensor] = []
        names = [m for m in self.generation_metrics if m != "is"]
        with _progress(self.progress and trainer.is_global_zero, "reference features") as bar:
            for images, idx in self._reference_images(trainer, trainer.global_rank, trainer.world_size):
                feats = self._features(images.to(device), device, names)
                for n in needs:
                    cache[n].append(feats[n].cpu())
                indices.append(idx)
                bar.update(len(images))
        dims = self._dims(device)
        self._real_cache = {n: torch.cat(v) if v else torch.zeros(0, dims[n]) for n, v in cache.items()}
        self._real_indices = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
        return self._real_cache

    def _build_metrics(self, device: torch.device) -> dict[str, Any]:
        dims = dict(self.inception(device).feature_dims) if any(m in INCEPTION_METRICS for m in self.metrics) else {}
        stored = load_reference_npz(self.reference) if self.reference is not None else None
        out: dict[str, Any] = {}
        for name in self.generation_metrics:
            if name == "fid":
                ref = (stored.mu, stored.sigma) if stored is not None and stored.mu is not None else None
                out[name] = FID(num_features=dims["pool_3"], reference=ref)
            elif name == "sfid":
                ref = (stored.mu_s, stored.sigma_s) if stored is not None and stored.mu_s is not None else None
                out[name] = SFID(num_features=dims["spatial"], reference=ref)
            elif name == "is":
                out[name] = InceptionScore(rule=self.is_rule)  # type: ignore[arg-type]
            elif name == "precision_recall":
                out[name] = PrecisionRecall()
            elif name == "kdd":
                out[name] = KDD(num_subsets=self.kdd_subsets, subset_size=self.kdd_subset_size, seed=self.kdd_seed)
        return {k: m.to(device) for k, m in out.items()}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Sample, extract, gather, compute, log; returns ``{name: value}`` (same on every rank)."""
        if not self.generation_metrics:
            return {}
        device = pl_module.device
        rank, world = trainer.global_rank, trainer.world_size
        real = self._prepare_reference(trainer, device)
        metrics = self._build_metrics(device)
        assert self._real_indices is not None
        real_idx = self._real_indices.to(device)
        for name, metric in metrics.items():
            if name == "fid" and not metric.has_fixed_reference:
                metric.update(real["pool_3"].to(device), real=True)
            elif name == "sfid" and not metric.has_fixed_reference:
                metric.update(real["spatial"].to(device), real=True)
            elif name == "precision_recall":
                metric.update(real["pool_3"].to(device), real=True)
            elif name == "kdd":
                metric.update(real["dinov2"].to(device), real=True, indices=real_idx)

        num_classes = int(pl_module.num_classes)
        batches, calls = rank_batches(self.num_samples, self.batch_size, world, rank)
        sharded = world > 1 and _is_sharded(pl_module)
        kwargs = dict(self.sample_kwargs)
        if self.num_steps is not None:
            kwargs["num_steps"] = self.num_steps
        kept: list[np.ndarray] = []
        ema = EMA.find(trainer)
        with eval_mode(pl_module), (ema.swapped(pl_module) if ema is not None else contextlib.nullcontext()):
            with _progress(self.progress and trainer.is_global_zero, "evaluation samples",
                           total=sum(min(self.batch_size, self.num_samples - b * self.batch_size)
                                     for b in batches)) as bar:
                for call in range(calls if sharded else len(batches)):
                    if call >= len(batches):
                        # sharded forwards are collective: match the other ranks' call count, discard
                        pl_module.sample(torch.zeros(1, dtype=torch.int64), generator=self.batch_generator(-1, device),
                                         progress=False, **kwargs)
                        continue
                    b = batches[call]
                    start = b * self.batch_size
                    count = min(self.batch_size, self.num_samples - start)
                    labels = balanced_labels(count, num_classes, start).to(device)
                    images = pl_module.sample(labels, generator=self.batch_generator(b, device), progress=False,
                                              **kwargs)
                    uint8 = quantize(_check_samples(images, count), self.quantization)
                    feats = self._features(uint8, device, self.generation_metrics)
                    idx = torch.arange(start, start + count, device=device)
                    self._update_fake(metrics, feats, idx)
                    if self.npz_path:
                        kept.append(nchw_to_nhwc(uint8).cpu().numpy())
                    bar.update(count)
        if not batches:  # a rank without samples still joins the gather, with empty states of the right width
            self._update_fake(metrics, self._empty_features(device), torch.zeros(0, device=device))

        results: dict[str, float] = {}
        for name, metric in metrics.items():
            value = metric.compute()
            if isinstance(value, dict):
                results.update({k: float(v) for k, v in value.items()})
            else:
                results["inception_score" if name == "is" else name] = float(value)
        if self.npz_path:
            self._write_npz(trainer, kept, num_classes)
        self._log(trainer, pl_module, results)
        return results

    def _dims(self, device: torch.device) -> dict[str, int]:
        dims: dict[str, int] = {}
        if any(m in INCEPTION_METRICS for m in self.generation_metrics):
            dims.update(self.inception(device).feature_dims)
        if "kdd" in self.generation_metrics:
            dims.update(self.dinov2(device).feature_dims)
        return dims

    def _empty_features(self, device: torch.device) -> dict[str, Tensor]:
        return {name: torch.zeros(0, width, device=device) for name, width in self._dims(device).items()}

    @staticmethod
    def _update_fake(metrics: dict[str, Any], feats: dict[str, Tensor], idx: Tensor) -> None:
        for name, metric in metrics.items():
            if name == "fid":
                metric.update(feats["pool_3"], real=False)
            elif name == "sfid":
                metric.update(feats["spatial"], real=False)
            elif name == "is":
                metric.update(feats["logits_unbiased"], indices=idx)
            elif name == "precision_recall":
                metric.update(feats["pool_3"], real=False)
            elif name == "kdd":
                metric.update(feats["dinov2"], real=False, indices=idx)

    def _write_npz(self, trainer: L.Trainer, kept: list[np.ndarray], num_classes: int) -> None:
        assert self.npz_path is not None
        path = Path(self.npz_path)
        part = path.with_name(f"{path.stem}.rank{trainer.global_rank}.npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        if kept:
            np.save(part, np.concatenate(kept))
        trainer.strategy.barrier("evaluation_npz_parts")
        if trainer.is_global_zero:
            parts = [path.with_name(f"{path.stem}.rank{r}.npy") for r in range(trainer.world_size)]
            existing = [p for p in parts if p.is_file()]  # rank order = sample order (contiguous ranges)
            write_npz(path, (np.load(p, mmap_mode="r") for p in existing), num_images=self.num_samples,
                      labels=balanced_labels(self.num_samples, num_classes).numpy())
            for p in existing:
                p.unlink()
        trainer.strategy.barrier("evaluation_npz_written")

    # ------------------------------------------------------------------ reconstruction
    def _reconstruction_setup(self, device: torch.device) -> dict[str, Any]:
        if self._recon_metrics is None:
            out: dict[str, Any] = {}
            for name in self.reconstruction_metrics:
                if name == "rfid":
                    out[name] = RFID(num_features=self.inception(device).feature_dims["pool_3"])
                elif name == "psnr":
                    out[name] = PSNR()
                elif name == "ssim":
                    out[name] = SSIM()
            self._recon_metrics = out
        return {k: m.to(device) for k, m in self._recon_metrics.items()}

    @torch.no_grad()
    def reconstruction_update(self, pl_module: L.LightningModule, images: Tensor) -> None:
        """Reconstruct a batch of [-1, 1] images and update rFID / PSNR / SSIM."""
        metrics = self._reconstruction_setup(pl_module.device)
        if hasattr(pl_module, "reconstruct"):
            recon = pl_module.reconstruct(images)
        elif hasattr(pl_module, "encode") and hasattr(pl_module, "decode"):
            recon = pl_module.decode(pl_module.encode(images))
        else:
            raise AttributeError(f"reconstruction metrics need `reconstruct(images)` or `encode`/`decode` on "
                                 f"{type(pl_module).__name__}")
        originals = quantize(images, "round")  # the uint8 validation images, exactly
        recons = quantize(_check_samples(recon, len(images)), self.quantization)
        if "rfid" in metrics:
            device = pl_module.device
            metrics["rfid"].update(self.inception(device)(originals)["pool_3"], real=True)
            metrics["rfid"].update(self.inception(device)(recons)["pool_3"], real=False)
        for name in ("psnr", "ssim"):
            if name in metrics:
                metrics[name].update(recons.float(), originals.float())

    def reconstruction_compute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        if self._recon_metrics is None:
            return {}
        results = {name: float(m.compute()) for name, m in self._recon_metrics.items()}
        for m in self._recon_metrics.values():
            m.reset()
        self._log(trainer, pl_module, results)
        return results

    # ------------------------------------------------------------------ logging and hooks
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, results: dict[str, float]) -> None:
        self.last_results.update(results)
        for name, value in results.items():
            # every rank holds the same gathered value, so the mean over ranks is that value exactly
            pl_module.log(self.prefix + name, value, prog_bar=True, sync_dist=True)
        if trainer.is_global_zero and results:
            width = max(len(self.prefix + n) for n in results)
            rows = "\n".join(f"  {self.prefix + n:<{width}}  {v:.6g}" for n, v in results.items())
            rank_zero_info(f"Evaluation at step {trainer.global_step} ({self.num_samples} samples):\n{rows}")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.reconstruction_metrics and not trainer.sanity_checking:
            self.reconstruction_update(pl_module, _image_of(batch))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.reconstruction_compute(trainer, pl_module)
        validating = trainer.state.fn == "validate"
        if self.generation_metrics and (self.on_validation or validating):
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.evaluate(trainer, pl_module)


# ---------------------------------------------------------------------- helpers
def _share(total: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous [lo, hi) share of ``total`` items for ``rank`` (sizes differ by at most one)."""
    per = math.ceil(total / world)
    return min(rank * per, total), min((rank + 1) * per, total)


def _image_of(item: Any) -> Tensor:
    image = item["image"] if isinstance(item, dict) else item[0] if isinstance(item, (tuple, list)) else item
    if not torch.is_tensor(image) or not image.is_floating_point():
        raise TypeError(f"reference/validation images must be float tensors in [-1, 1] under 'image', got "
                        f"{getattr(image, 'dtype', type(image))}")
    return image


def _check_samples(images: Tensor, count: int) -> Tensor:
    """Samples must be (count, 3, H, W) floats in [-1, 1] (DESIGN contract); tolerate rounding at the ends."""
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise TypeError(f"pl_module.sample must return float images in [-1, 1], got "
                        f"{getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[0] != count or images.shape[1] != 3:
        raise ValueError(f"pl_module.sample must return ({count}, 3, H, W) images, got {tuple(images.shape)}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"samples must lie in [-1, 1] (decode and clamp first), got range [{lo:.3g}, {hi:.3g}]")
    return images


def _validation_dataset(trainer: L.Trainer) -> Any:
    loaders = trainer.val_dataloaders
    if loaders is None and trainer.datamodule is not None:
        loaders = trainer.datamodule.val_dataloader()
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    dataset = getattr(loaders, "dataset", None)
    if dataset is None:
        raise RuntimeError("Evaluation needs a reference: pass `reference=` (ADM .npz) or give the trainer a "
                           "validation dataset")
    return dataset


@contextlib.contextmanager
def _progress(enabled: bool, desc: str, total: int | None = None) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
