"""`LatentWriter`: stores the latents of a ``predict`` run in safetensors shards + ``manifest.json``.

The official SR-DiT pipeline encodes every training image once (one INVAE posterior sample) and trains on
the stored latents (reference/srdit/README "Data pipeline"); RAE stage 2 trains on stored encoder latents
the same way. A ``predict`` run over the training images with ``lightning_modules.LatentEncoder`` (or any
module whose ``predict_step`` returns ``{"latent": (B, C, H, W), ...}`` or the latent tensor) and this
callback writes, per rank, shards ``shard-r{rank}-{k}.safetensors`` holding

    latent       (n, C, H, W)  float32 or bfloat16 (``dtype``), raw (unscaled) latents
    label        (n,)          int64
    index        (n,)          int64, the item's index in the source dataset
    image        (n, 3, R, R)  uint8, optional (``save_images``): the source image, for on-the-fly targets
    repa_target  (n, T, D)     optional (``save_targets`` and present in the prediction)

then rank 0 merges the per-rank lists into ``manifest.json``: format version, ``latent_shape``,
``latent_dtype``, ``tokenizer`` name, ``scale`` (the factor the diffusion model multiplies latents by),
``mode`` (sample / mean), ``num_classes``, ``num_samples``, ``keys`` and the shapes of the optional
tensors, and the shard list ``[{"file", "count"}]``. ``datamodules.LatentDataModule`` reads it back.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def images_to_uint8(images: Tensor) -> Tensor:
    """[−1, 1] float → uint8 by rounding (exact for data that came from uint8 by x / 127.5 − 1)."""
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()


class LatentWriter(BasePredictionWriter):
    """Writes predicted latents (+ labels, indices, optional images / targets) in shards; see module doc.

    Args:
        output_dir: directory of the shards and ``manifest.json``.
        shard_size: items per shard file (per rank).
        dtype: storage dtype of latents and targets ("float32", "bfloat16", "float16").
        save_images: also store the source images as uint8 (needed for on-the-fly DINOv2 targets).
        save_targets: store ``repa_target`` when the prediction has it.
        overwrite: replace an existing cache in ``output_dir`` (otherwise an existing manifest is an error).
    """

    def __init__(
        self,
        output_dir: str,
        shard_size: int = 4096,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        save_images: bool = True,
        save_targets: bool = True,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.output_dir = Path(output_dir)
        self.shard_size = shard_size
        self.dtype = dtype
        self.save_images = save_images
        self.save_targets = save_targets
        self.overwrite = overwrite
        self._buffer: dict[str, list[Tensor]] = {}
        self._buffered = 0
        self._shards: list[dict[str, Any]] = []
        self._shapes: dict[str, list[int]] = {}
        self._seen = 0

    # ------------------------------------------------------------------ lifecycle
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        manifest = self.output_dir / MANIFEST
        if trainer.is_global_zero:
            if manifest.exists() and not self.overwrite:
                raise FileExistsError(f"{manifest} exists: a latent cache is already there (set overwrite: true "
                                      f"to replace it)")
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.overwrite:
                for old in [manifest, *self.output_dir.glob("shard-r*.safetensors"),
                            *self.output_dir.glob("manifest.rank*.json")]:
                    old.unlink(missing_ok=True)
        trainer.strategy.barrier("latent_writer_start")
        self._buffer, self._buffered, self._shards, self._shapes, self._seen = {}, 0, [], {}, 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        items = self._items(prediction, batch, batch_indices)
        for key, value in items.items():
            self._buffer.setdefault(key, []).append(value)
        self._buffered += len(items["label"])
        while self._buffered >= self.shard_size:
            self._flush(trainer.global_rank, self.shard_size)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        while self._buffered:
            self._flush(trainer.global_rank, min(self._buffered, self.shard_size))
        part = self.output_dir / f"manifest.rank{trainer.global_rank}.json"
        part.write_text(json.dumps({"shards": self._shards, "shapes": self._shapes}))
        trainer.strategy.barrier("latent_writer_parts")
        if trainer.is_global_zero:
            self._merge(trainer, pl_module)
        trainer.strategy.barrier("latent_writer_manifest")

    # ------------------------------------------------------------------ helpers
    def _items(self, prediction: Any, batch: Any, batch_indices: Any) -> dict[str, Tensor]:
        """This batch's tensors to store, on the CPU, in storage dtypes."""
        pred = prediction if isinstance(prediction, dict) else {"latent": prediction}
        if "latent" not in pred or not torch.is_tensor(pred["latent"]) or pred["latent"].ndim < 2:
            raise TypeError("LatentWriter needs predict_step to return the latents (B, ...) or a dict with 'latent' "
                            "(use lightning_modules.LatentEncoder)")
        latent = pred["latent"].detach()
        n = len(latent)
        label = pred.get("label", batch.get("label") if isinstance(batch, dict) else None)
        if label is None:
            raise KeyError("LatentWriter needs labels: in the prediction or as batch['label']")
        if batch_indices is not None and len(batch_indices) == n:
            index = torch.as_tensor(list(batch_indices), dtype=torch.int64)
        else:
            index = torch.arange(self._seen, self._seen + n, dtype=torch.int64)
        self._seen += n
        out = {"latent": latent.to(_DTYPES[self.dtype]).cpu(), "label": label.detach().to(torch.int64).cpu(),
               "index": index}
        if self.save_images:
            if not isinstance(batch, dict) or "image" not in batch:
                raise KeyError("save_images needs batch['image'] (images in [-1, 1])")
            out["image"] = images_to_uint8(batch["image"])
        if self.save_targets and "repa_target" in pred:
            out["repa_target"] = pred["repa_target"].detach().to(_DTYPES[self.dtype]).cpu()
        for key, value in out.items():
            shape = list(value.shape[1:])
            if self._shapes.setdefault(key, shape) != shape:
                raise ValueError(f"LatentWriter: '{key}' changed shape from {self._shapes[key]} to {shape}")
        return out

    def _flush(self, rank: int, count: int) -> None:
        """Write the first ``count`` buffered items as the next shard of this rank."""
        from safetensors.torch import save_file

        joined = {k: torch.cat(v) for k, v in self._buffer.items()}
        shard = {k: v[:count].contiguous() for k, v in joined.items()}
        rest = {k: v[count:] for k, v in joined.items()}
        name = f"shard-r{rank:03d}-{len(self._shards):06d}.safetensors"
        save_file(shard, str(self.output_dir / name))
        self._shards.append({"file": name, "count": count, "first_index": int(shard["index"][0])})
        self._buffer = {k: [v] for k, v in rest.items()}
        self._buffered -= count

    def _merge(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shards: list[dict[str, Any]] = []
        shapes: dict[str, list[int]] = {}
        for rank in range(trainer.world_size):
            part = self.output_dir / f"manifest.rank{rank}.json"
            data = json.loads(part.read_text())
            shards.extend(data["shards"])
            shapes.update(data["shapes"])
            part.unlink()
        shards.sort(key=lambda s: s["first_index"])
        datamodule = trainer.datamodule
        manifest = {
            "format": "speedrun-diffusion latents",
            "version": FORMAT_VERSION,
            "latent_shape": shapes.get("latent"),
            "latent_dtype": self.dtype,
            "tokenizer": getattr(pl_module, "tokenizer_name", None) or type(getattr(pl_module, "tokenizer", pl_module)).__name__,
            "scale": getattr(pl_module, "latent_scale", None),
            "mode": getattr(pl_module, "mode", None),
            "num_classes": getattr(datamodule, "num_classes", None) if datamodule is not None else None,
            "num_samples": sum(s["count"] for s in shards),
            "keys": sorted(shapes),
            "shapes": shapes,
            "shards": [{"file": s["file"], "count": s["count"]} for s in shards],
        }
        (self.output_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))


__all__ = ["FORMAT_VERSION", "LatentWriter", "MANIFEST", "images_to_uint8"]
