"""How samples become the images the papers evaluate: uint8 quantisation, balanced labels, ADM `.npz`.

* Quantisation (metrics README §2 "Quantisation"): the seed papers (SR-DiT / REPA-E ``generate.py``,
  RAE, ADM's own sampler) map a decoder output x in [-1, 1] to ``clamp(((x + 1) / 2) * 255, 0, 255)``
  and cast to uint8, i.e. they *truncate*. EDM2 rounds instead: ``clip(x * 127.5 + 128, 0, 255)``
  then the cast. The two differ by up to one level and FID notices, so the rule is explicit.
* Labels: sample k gets class ``k mod num_classes`` (SR-DiT ``generate.py``), so 50,000 samples hold
  exactly 50 per ImageNet class and every consecutive block of 5,000 is class-balanced.
* ``.npz``: the ADM evaluator reads ``arr_0`` (uint8, NHWC, RGB) from a sample batch and ``mu``,
  ``sigma``, ``mu_s``, ``sigma_s``, ``arr_0`` from a reference batch (guided-diffusion
  ``evaluations/evaluator.py``). The writer streams shards into one zip so 50K images never have to
  sit in memory at once.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Quantization = Literal["truncate", "round"]

__all__ = [
    "Quantization",
    "ReferenceBatch",
    "balanced_labels",
    "check_uint8_images",
    "load_reference_npz",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "quantize",
    "write_npz",
]


def quantize(images: Tensor, rule: Quantization = "truncate") -> Tensor:
    """Images in [-1, 1] (float, NCHW) → uint8 NCHW by the seed papers' rule.

    ``truncate`` (SR-DiT / REPA-E / RAE / ADM): ``clamp(((x + 1) / 2) * 255, 0, 255).to(uint8)``;
    ``round`` (EDM2 ``generate_images``): ``clip(x * 127.5 + 128, 0, 255).to(uint8)``. Both are
    evaluated in float32 in exactly this order of operations, since the order decides the edge values.
    """
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise TypeError(f"quantize expects a floating-point tensor in [-1, 1], got "
                        f"{getattr(images, 'dtype', type(images))}")
    if images.ndim != 4:
        raise ValueError(f"quantize expects NCHW images, got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("quantize got non-finite pixel values (NaN/inf): the sampler diverged")
    x = images.float()
    if rule == "truncate":
        # (x + 1) / 2 first, then * 255: the order of the papers' code, which fixes the edge cases
        y = torch.clamp((x + 1) / 2 * 255, 0, 255)
    elif rule == "round":
        y = torch.clamp(x * 127.5 + 128, 0, 255)
    else:
        raise ValueError(f"unknown quantization rule {rule!r}; use 'truncate' (seed papers) or 'round' (EDM2)")
    return y.to(torch.uint8)  # float → uint8 truncates toward zero


def check_uint8_images(images: Tensor, name: str = "images") -> None:
    """Raise a clear error unless ``images`` is uint8 NCHW with 3 (RGB) channels."""
    if not torch.is_tensor(images):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 in [0, 255] (quantise samples with callbacks.image_protocol.quantize "
                        f"first), got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be NCHW with 3 channels, got shape {tuple(images.shape)}")


def nchw_to_nhwc(images: Tensor) -> Tensor:
    """(N, C, H, W) → (N, H, W, C), the ADM ``arr_0`` layout."""
    return images.permute(0, 2, 3, 1).contiguous()


def nhwc_to_nchw(images: Tensor) -> Tensor:
    """(N, H, W, C) → (N, C, H, W), the layout the feature extractors take."""
    return images.permute(0, 3, 1, 2).contiguous()


def balanced_labels(num_samples: int, num_classes: int, start: int = 0) -> Tensor:
    """Labels of global sample indices ``start .. start + num_samples - 1``: index k → ``k mod num_classes``."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return torch.arange(start, start + num_samples, dtype=torch.int64) % num_classes


# ------------------------------------------------------------------------------------------ .npz
def _npy_header(shape: Sequence[int], dtype: np.dtype) -> bytes:
    from numpy.lib import format as npy_format

    header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    import io

    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def write_npz(path: str | Path, chunks: Iterable[np.ndarray | Tensor], num_images: int | None = None,
              labels: np.ndarray | Tensor | None = None) -> Path:
    """Write an ADM-evaluator sample batch: ``arr_0`` = uint8 NHWC RGB images (+ ``arr_1`` = labels).

    ``chunks`` are uint8 NHWC arrays written in order (streamed: only one chunk is in memory). If
    ``num_images`` is not given, the chunks are materialised once to count them.
    """
    path = Path(path)
    arrays = [c.cpu().numpy() if torch.is_tensor(c) else np.asarray(c) for c in chunks] if num_images is None else chunks
    if num_images is None:
        num_images = sum(len(a) for a in arrays)  # type: ignore[arg-type]
    iterator = iter(arrays)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_npz got no images")
    first = first.cpu().numpy() if torch.is_tensor(first) else np.asarray(first)
    if first.dtype != np.uint8 or first.ndim != 4 or first.shape[-1] != 3:
        raise ValueError(f"ADM .npz images must be uint8 NHWC RGB, got {first.dtype} {first.shape}")
    shape = (num_images, *first.shape[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            f.write(_npy_header(shape, np.uint8))
            for chunk in (first, *iterator):
                chunk = chunk.cpu().numpy() if torch.is_tensor(chunk) else np.asarray(chunk)
                if chunk.dtype != np.uint8 or tuple(chunk.shape[1:]) != shape[1:]:
                    raise ValueError(f"chunk {chunk.dtype} {chunk.shape} does not match uint8 {shape[1:]}")
                f.write(np.ascontiguousarray(chunk).tobytes())
                written += len(chunk)
        if labels is not None:
            lab = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
            with zf.open("arr_1.npy", "w", force_zip64=True) as f:
                f.write(_npy_header(lab.shape, lab.dtype))
                f.write(np.ascontiguousarray(lab).tobytes())
    if written != num_images:
        path.unlink(missing_ok=True)
        raise ValueError(f"write_npz: announced {num_images} images but got {written}")
    return path


@dataclass
class ReferenceBatch:
    """What the ADM evaluator reads from a reference ``.npz`` (any of them may be absent)."""

    images: np.ndarray | None  # arr_0, uint8 NHWC
    mu: np.ndarray | None
    sigma: np.ndarray | None
    mu_s: np.ndarray | None
    sigma_s: np.ndarray | None


def load_reference_npz(path: str | Path, required: Sequence[str] = ()) -> ReferenceBatch:
    """Read an ADM reference batch (e.g. ``VIRTUAL_imagenet256_labeled.npz``) without pickles.

    ``required`` names the keys the caller needs (``arr_0``, ``mu``, ``sigma``, ``mu_s``, ``sigma_s``);
    a missing one raises ``KeyError`` naming the file and the keys it does have. Statistics are used
    as stored (ADM never recomputes ``mu``/``sigma`` from ``arr_0`` when they are present).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference batch {str(path)!r} does not exist (ADM reference .npz expected)")
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        missing = [k for k in required if k not in keys]
        if missing:
            raise KeyError(f"reference batch {str(path)!r} lacks {missing}; it has {sorted(keys)}")
        get = lambda k: data[k] if k in keys else None  # noqa: E731
        batch = ReferenceBatch(images=get("arr_0"), mu=get("mu"), sigma=get("sigma"), mu_s=get("mu_s"),
                               sigma_s=get("sigma_s"))
    if batch.images is not None and (batch.images.dtype != np.uint8 or batch.images.ndim != 4
                                     or batch.images.shape[-1] != 3):
        raise ValueError(f"{str(path)!r}: arr_0 must be uint8 NHWC RGB, got {batch.images.dtype} {batch.images.shape}")
    for mu, sigma in (("mu", "sigma"), ("mu_s", "sigma_s")):
        m, s = getattr(batch, mu), getattr(batch, sigma)
        if (m is None) != (s is None):
            raise KeyError(f"reference batch {str(path)!r} has only one of {mu!r} / {sigma!r}")
        if m is not None and (m.ndim != 1 or s.shape != (m.shape[0], m.shape[0])):
            raise ValueError(f"{str(path)!r}: {mu} {m.shape} and {sigma} {s.shape} are not (D,) and (D, D)")
    return batch
