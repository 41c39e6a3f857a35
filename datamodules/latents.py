"""Pre-computed tokenizer latents / encoder features: `LatentDataset`, `LatentDataModule`, and `SplitForPredict`
(the image split a caching ``predict`` run encodes).

A cache is a directory written by ``callbacks.LatentWriter``: ``manifest.json`` + safetensors shards with
``latent`` (n, C, H, W), ``label`` (n,), ``index`` (n,) and optionally ``image`` (n, 3, R, R) uint8 and
``repa_target`` (n, T, D). The same reader serves SR-DiT (INVAE posterior samples, C·H·W = 32·16·16) and
RAE stage 2 (frozen-encoder features): nothing here knows which tokenizer wrote it.

Items are ``{"latent": float32 (C, H, W) raw (the recipe multiplies by its latent scale), "label": int64}``
plus, when asked, ``"image"`` float in [−1, 1] (x / 127.5 − 1 of the stored uint8, the DESIGN contract) and
``"repa_target"`` float32 (T, D).

Where the REPA / REG targets come from is a trade-off (``with_images`` / ``with_targets``):

* images (official SR-DiT): the stored image feeds the frozen DINOv2 every step — exactly the official
  targets, one ViT-B/14 forward per image per step (about a third of an SR-DiT-B/1 training step's FLOPs), and
  12× the latent storage at 256 px (196 KB uint8 image vs 32 KB float32 latent).
* pre-computed targets: no encoder at training time (faster steps, less memory), but 257 × 768 values per
  image (395 KB in bfloat16, ~500 GB for ImageNet) and the targets are frozen to one rounding — fine for
  SR-DiT, which uses no augmentation, but not for recipes that augment the images.

Errors name the offending file: a missing manifest or shard, a shard whose tensor shape / dtype differs from
the manifest, a label outside [0, num_classes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from speedrun_diffusion.datamodules.loaders import check_loader_args, eval_loader, train_loader

MANIFEST = "manifest.json"  # callbacks.latent_writer.MANIFEST (datamodules must not import callbacks)
_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I64": "int64", "U8": "uint8"}


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The cache's ``manifest.json`` (FileNotFoundError naming it, with how to write one)."""
    path = Path(root).expanduser() / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no latent cache manifest at {path}: write the cache with a predict run "
                                f"(lightning_modules.LatentEncoder + callbacks.LatentWriter, see configs/srdit/"
                                f"cache_latents_256.yaml)")
    manifest = json.loads(path.read_text())
    for key in ("latent_shape", "latent_dtype", "shards"):
        if key not in manifest:
            raise ValueError(f"{path}: manifest has no {key!r}")
    return manifest


class LatentDataset(Dataset):
    """Items of a latent cache (see module docstring); shards are memory-mapped, read item by item.

    Args:
        root: cache directory (``manifest.json`` + shards).
        with_images / with_targets: also return ``image`` / ``repa_target`` (must have been written).
        num_classes: labels must lie in [0, num_classes) (default: the manifest's ``num_classes``).
        limit: use only the first ``limit`` items (e.g. a validation subset).
    """

    def __init__(self, root: str | Path, with_images: bool = False, with_targets: bool = False,
                 num_classes: int | None = None, limit: int | None = None) -> None:
        self.root = Path(root).expanduser()
        self.manifest = read_manifest(self.root)
        keys = ["latent", "label"] + (["image"] if with_images else []) + (["repa_target"] if with_targets else [])
        stored = set(self.manifest.get("keys", ["latent", "label"]))
        for key, flag in (("image", "save_images"), ("repa_target", "save_targets")):
            if key in keys and key not in stored:
                raise ValueError(f"{self.root / MANIFEST}: the cache has no '{key}' (written with {flag}: false); "
                                 f"stored keys: {sorted(stored)}")
        self.keys = keys
        self.num_classes = num_classes if num_classes is not None else self.manifest.get("num_classes")
        shapes = dict(self.manifest.get("shapes", {}))
        shapes["latent"] = list(self.manifest["latent_shape"])
        self.shapes = shapes
        self.files = [self.root / s["file"] for s in self.manifest["shards"]]
        self.counts = [int(s["count"]) for s in self.manifest["shards"]]
        self.labels = torch.cat([self._check_shard(f, n) for f, n in zip(self.files, self.counts)]) \
            if self.files else torch.zeros(0, dtype=torch.int64)
        self.starts = torch.tensor([0, *self.counts]).cumsum(0)
        total = int(self.starts[-1])
        self.length = total if limit is None else min(int(limit), total)
        if self.length < 1:
            raise ValueError(f"latent cache {self.root} is empty")
        self._handles: dict[int, Any] = {}

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.shapes["latent"])

    def _expected(self, key: str) -> tuple[list[int], str]:
        dtype = {"label": "int64", "index": "int64", "image": "uint8"}.get(key, self.manifest["latent_dtype"])
        return self.shapes.get(key, []), dtype

    def _check_shard(self, file: Path, count: int) -> Tensor:
        """Validate a shard's header against the manifest and return its labels (range-checked)."""
        from safetensors import safe_open

        if not file.is_file():
            raise FileNotFoundError(f"latent shard {file} listed in {self.root / MANIFEST} does not exist")
        with safe_open(str(file), framework="pt") as f:
            present = set(f.keys())
            for key in self.keys:
                if key not in present:
                    raise ValueError(f"latent shard {file} has no tensor '{key}' (has {sorted(present)})")
                tensor = f.get_slice(key)
                shape, dtype = list(tensor.get_shape()), _DTYPES.get(tensor.get_dtype(), tensor.get_dtype())
                want_shape, want_dtype = self._expected(key)
                if shape != [count, *want_shape] or dtype != want_dtype:
                    raise ValueError(f"latent shard {file}: '{key}' is {dtype} {shape}, the manifest says "
                                     f"{want_dtype} {[count, *want_shape]}")
            labels = f.get_tensor("label")
        if self.num_classes is not None and len(labels):
            bad = (labels < 0) | (labels >= int(self.num_classes))
            if bad.any():
                raise ValueError(f"latent shard {file}: label {int(labels[bad][0])} outside [0, {self.num_classes}) "
                                 f"(num_classes from the manifest or LatentDataModule(num_classes=...))")
        return labels

    def __len__(self) -> int:
        return self.length

    def _handle(self, shard: int) -> Any:
        # opened lazily in each DataLoader worker (mmap handles do not cross process boundaries)
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.files[shard]), framework="pt")
        return self._handles[shard]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} cached items")
        index %= self.length
        shard = int(torch.searchsorted(self.starts, torch.tensor(index), right=True)) - 1
        row = index - int(self.starts[shard])
        f = self._handle(shard)
        item = {"latent": f.get_slice("latent")[row].float(), "label": self.labels[index].clone()}
        if "image" in self.keys:
            item["image"] = f.get_slice("image")[row].float() / 127.5 - 1
        if "repa_target" in self.keys:
            item["repa_target"] = f.get_slice("repa_target")[row].float()
        return item


class LatentDataModule(L.LightningDataModule):
    """Batches of cached latents: ``{"latent", "label"}`` (+ ``"image"`` / ``"repa_target"``); see module doc.

    Args:
        root: training cache directory (written by ``callbacks.LatentWriter``).
        val_root: validation cache; None validates on the first ``val_size`` training items (loss curves only).
        with_images: load the stored images (on-the-fly DINOv2 targets; the official SR-DiT pipeline).
        with_targets: load pre-computed ``repa_target`` tokens instead (or as well).
        num_classes: label range check (default: the manifest's).
        batch_size / val_batch_size / num_workers / seed: loader settings (datamodules.loaders conventions).
        val_size: items of the validation split used (None: all of ``val_root``; 1024 of ``root``).
    """

    def __init__(
        self,
        root: str,
        val_root: str | None = None,
        with_images: bool = True,
        with_targets: bool = False,
        num_classes: int | None = None,
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        val_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # the recipe logs num_classes etc.; a larger model table must not clash
        check_loader_args(batch_size, num_workers)
        self.manifest = read_manifest(root)  # a missing cache fails when the config is built, not at fit
        self.train_set: LatentDataset | None = None
        self.val_set: LatentDataset | None = None

    @property
    def num_classes(self) -> int:
        n = self.hparams.num_classes or self.manifest.get("num_classes")
        if n is None:
            raise ValueError(f"{self.hparams.root}: the manifest has no num_classes; pass LatentDataModule(num_classes=)")
        return int(n)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["latent_shape"])

    @property
    def latent_scale(self) -> float | None:
        return self.manifest.get("scale")

    def _dataset(self, root: str, limit: int | None) -> LatentDataset:
        hp = self.hparams
        return LatentDataset(root, hp.with_images, hp.with_targets, hp.num_classes, limit)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._dataset(hp.root, None)
        if self.val_set is None:
            self.val_set = self._dataset(hp.val_root, hp.val_size) if hp.val_root else \
                self._dataset(hp.root, 1024 if hp.val_size is None else hp.val_size)

    def _val_batch_size(self) -> int:
        return self.hparams.val_batch_size or self.hparams.batch_size

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return train_loader(self.train_set, self.hparams.batch_size, self.hparams.num_workers, self.hparams.seed)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return eval_loader(self.val_set, self._val_batch_size(), self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class SplitForPredict(L.LightningDataModule):
    """Serves one split of an image datamodule, in order and unflipped, to a latent-caching ``predict`` run.

    ``source`` is any datamodule with ``train_set`` / ``val_set`` after ``setup`` (SyntheticDataModule,
    ImageNetDataModule); flips are switched off (``with_flip_prob(0)``) as the official cache has none.
    """

    def __init__(self, source: L.LightningDataModule, split: Literal["train", "val"] = "train",
                 batch_size: int = 64, num_workers: int = 0, limit: int | None = None) -> None:
        super().__init__()
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        check_loader_args(batch_size, num_workers)
        self.source = source
        self.split = split
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit = limit

    @property
    def num_classes(self) -> int:
        return int(self.source.num_classes)

    def dataset(self) -> Dataset:
        self.source.setup("fit")
        data = getattr(self.source, f"{self.split}_set", None)
        if data is None:
            raise AttributeError(f"{type(self.source).__name__} has no {self.split}_set after setup")
        if hasattr(data, "with_flip_prob"):
            data = data.with_flip_prob(0.0)
        if self.limit is not None:
            data = torch.utils.data.Subset(data, range(min(self.limit, len(data))))
        return data

    def predict_dataloader(self) -> DataLoader:
        return eval_loader(self.dataset(), self.batch_size, self.num_workers)


__all__ = ["LatentDataModule", "LatentDataset", "SplitForPredict", "read_manifest"]
