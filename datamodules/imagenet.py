"""ImageNet (or any ImageFolder tree) preprocessed as ADM, DiT and REPA do.

Layout: ``root/<class_dir>/<image files>``. Classes are the sorted names of the non-hidden
subdirectories of ``root``; a class's label is its position in that list. Image files are found
recursively inside each class directory by extension (jpg, jpeg, png, webp, bmp; any letter case);
hidden files and other extensions are ignored. A validation tree is labelled with the training
tree's class list, so the same folder name gets the same label in both.

Preprocessing of one file: decode, ``convert("RGB")``, :func:`adm_center_crop` to R x R, an optional
horizontal flip (probability ``flip_prob``; the datamodule uses it for training only), then
``x / 127.5 - 1`` to float (3, R, R) in [-1, 1] (DESIGN.md contract).

Error policy:

* A missing root, a root without class subdirectories, or a tree without any image file raises
  ``FileNotFoundError`` naming the path and the expected layout.
* A file that cannot be decoded (corrupt, truncated, not an image, any error of PIL's decoders)
  raises :class:`CorruptImageError` (a ``ValueError``) naming the file, by default. With
  ``skip_corrupt=True`` the item is replaced by the next readable item in index order (wrapping
  around; the replacement keeps its own label) and every distinct unreadable file is recorded once
  in ``skipped_files``, counted in ``num_skipped`` and named in a warning of the log.
* A file that decodes but cannot be a training image raises :class:`UnsupportedImageError` (a
  ``CorruptImageError``, so ``skip_corrupt`` skips and counts it too) naming the file: a pixel mode
  without an 8-bit RGB meaning (16-bit, 32-bit integer or float: ``convert("RGB")`` would clip it),
  a side shorter than ``MIN_IMAGE_SIDE`` pixels, or a header claiming more pixels than PIL's
  decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``). Every 8-bit mode (greyscale, palette, RGBA,
  CMYK, YCbCr, ...) is converted to RGB and any larger size is resized by the ADM crop. Those
  records live in the process that read the file: with DataLoader workers, each worker keeps its
  own count.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from speedrun_diffusion.datamodules.image_datamodule import ImageDataModule
from speedrun_diffusion.datamodules.loaders import check_loader_args, eval_loader, train_loader
from speedrun_diffusion.datamodules.pixels import uint8_to_model_range

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

log = logging.getLogger(__name__)


class CorruptImageError(ValueError):
    """An image file exists but cannot be decoded; the message names the file."""


class UnsupportedImageError(CorruptImageError):
    """An image file decodes but has a pixel mode or size no training image may have; names the file."""


# 8-bit modes that convert("RGB") maps faithfully; "I;16", "I", "F" would be clipped to garbage
RGB_CONVERTIBLE_MODES: frozenset[str] = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
)
MIN_IMAGE_SIDE = 8


def _layout_hint(root: Path) -> str:
    return f"expected the ImageFolder layout {root}/<class_dir>/<image files> (e.g. {root}/n01440764/img_0001.JPEG)"


def adm_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize and centre-crop to ``resolution`` x ``resolution`` exactly as ADM's ``center_crop_arr``.

    The preprocessing of ADM (Dhariwal & Nichol 2021), reused by DiT and REPA:
    1. while the short side is >= 2 * resolution, halve both sides (integer division) with a box
       filter — cheap antialiasing before the final resample;
    2. scale with bicubic so the short side equals ``resolution``, each side rounded with Python's
       ``round`` (ties to even);
    3. crop the centre with integer offsets ``(side - resolution) // 2`` (top-left bias on odd excess).
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    while min(image.size) >= 2 * resolution:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    factor = resolution / min(image.size)
    scaled_size = (round(image.width * factor), round(image.height * factor))
    image = image.resize(scaled_size, resample=Image.Resampling.BICUBIC)
    left = (image.width - resolution) // 2
    top = (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def find_classes(root: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the non-hidden subdirectories of ``root``; FileNotFoundError if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory; {_layout_hint(root)}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"image folder {root} has no class subdirectories; {_layout_hint(root)}")
    return classes


def _image_files(class_dir: Path) -> list[str]:
    """Image files below ``class_dir`` (recursive, symlinks followed), sorted, hidden entries skipped."""
    found = []
    for directory, subdirs, files in os.walk(class_dir, followlinks=True):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        found.extend(
            os.path.join(directory, name)
            for name in files
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        )
    return sorted(found)


def read_rgb(path: str) -> Image.Image:
    """Fully decode ``path`` and convert it to RGB; CorruptImageError (or UnsupportedImageError) naming the file.

    A header claiming more than ``Image.MAX_IMAGE_PIXELS`` pixels (a decompression bomb: a 1 KB PNG can claim
    30000x30000) is refused before decoding — PIL warns below twice the limit and raises above it, naming no file —
    and any other error PIL raises while decoding is a CorruptImageError: ``skip_corrupt`` skips them all."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                # decode now: Image.open is lazy and a truncated file only fails on load
                image.load()
                mode, size = image.mode, image.size
                if mode in RGB_CONVERTIBLE_MODES and min(size) >= MIN_IMAGE_SIDE:
                    return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnsupportedImageError(f"image file {path} claims more pixels than PIL's decompression-bomb limit "
                                    f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {error}") from error
    except MemoryError as error:
        raise UnsupportedImageError(f"image file {path} does not fit in memory when decoded") from error
    except Exception as error:  # PIL's decoders raise OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        raise CorruptImageError(f"cannot decode image file {path}: {type(error).__name__}: {error}") from error
    if mode not in RGB_CONVERTIBLE_MODES:
        raise UnsupportedImageError(f"image file {path} has pixel mode {mode!r}, which has no 8-bit RGB meaning; "
                                    f"save it as 8-bit RGB (accepted modes: {sorted(RGB_CONVERTIBLE_MODES)})")
    raise UnsupportedImageError(f"image file {path} is {size[0]}x{size[1]} pixels; images need at least "
                                f"{MIN_IMAGE_SIDE} pixels on each side to be centre-cropped")


class ImageFolderImages(Dataset):
    """ImageFolder dataset with ADM centre crops; item ``i`` is ``{"image": (3, R, R) in [-1, 1], "label": int64}``.

    ``classes`` pins the class list (and so the labels), e.g. a validation tree reusing the training
    tree's classes; a folder under ``root`` that is not in it is an error. See the module docstring
    for the layout and the corrupt-file policy.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        resolution: int = 256,
        flip_prob: float = 0.0,
        skip_corrupt: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.root = Path(root)
        self.resolution = resolution
        self.flip_prob = float(flip_prob)
        self.skip_corrupt = skip_corrupt
        present = find_classes(self.root)
        self.classes = list(classes) if classes is not None else present
        self.class_to_idx = {name: label for label, name in enumerate(self.classes)}
        unknown = [name for name in present if name not in self.class_to_idx]
        if unknown:
            raise ValueError(f"class folders {unknown[:5]} under {self.root} are not among the {len(self.classes)} given classes")
        self.samples: list[tuple[str, int]] = [
            (path, self.class_to_idx[name]) for name in present for path in _image_files(self.root / name)
        ]
        if not self.samples:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise FileNotFoundError(f"image folder {self.root} contains no image files ({extensions}); {_layout_hint(self.root)}")
        self.skipped_files: set[str] = set()

    @property
    def num_skipped(self) -> int:
        """Number of distinct unreadable files skipped so far by this process (``skip_corrupt=True``)."""
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.samples)

    def with_flip_prob(self, flip_prob: float) -> ImageFolderImages:
        """A copy sharing the file list (no rescan) with another flip probability and its own skip record."""
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        twin = copy.copy(self)
        twin.flip_prob = float(flip_prob)
        twin.skipped_files = set()
        return twin

    def load(self, index: int, flip: bool | None = None) -> dict[str, torch.Tensor]:
        """Item ``index``; ``flip`` pins the horizontal flip, otherwise it is drawn with ``flip_prob`` from torch's RNG.

        torch's global RNG is seeded differently in every DataLoader worker, so flips differ across workers.
        """
        count = len(self.samples)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} images")
        for offset in range(count):
            path, label = self.samples[(index + offset) % count]
            try:
                image = read_rgb(path)
            except CorruptImageError as error:
                if not self.skip_corrupt:
                    raise
                if path not in self.skipped_files:  # each file named once, with the running count
                    self.skipped_files.add(path)
                    log.warning("skip_corrupt: skipped an unreadable image (%d so far in this process): %s",
                                self.num_skipped, error)
                continue
            pixels = np.asarray(adm_center_crop(image, self.resolution))
            if flip is None:
                flip = self.flip_prob > 0 and bool(torch.rand(()) < self.flip_prob)
            if flip:
                pixels = pixels[:, ::-1]
            return {"image": uint8_to_model_range(pixels), "label": torch.tensor(label, dtype=torch.int64)}
        raise CorruptImageError(f"no readable image under {self.root}: all {count} files failed to decode")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.load(index)


class ImageNetDataModule(ImageDataModule):
    """LightningDataModule over ImageFolder trees with ADM preprocessing (class-conditional ImageNet).

    Training items are flipped with probability ``flip_prob`` when ``random_flip``; validation, test
    and prediction items never are. Without ``val_root`` the evaluation loaders read the training
    tree unflipped (generative metrics use training-set statistics, as ADM's reference batches do).
    ``num_classes`` is the label space (``num_classes`` itself is the null class); more class folders
    than that is an error. Loader conventions are those of :mod:`datamodules.loaders`; ``seed`` seeds
    the training shuffle.
    """

    def __init__(
        self,
        root: str,
        resolution: int = 256,
        batch_size: int = 256,
        val_root: str | None = None,
        num_workers: int = 8,
        random_flip: bool = True,
        skip_corrupt: bool = False,
        num_classes: int = 1000,
        flip_prob: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # the recipe logs num_classes etc.; a larger model table must not clash
        check_loader_args(batch_size, num_workers)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.train_set: ImageFolderImages | None = None
        self.val_set: ImageFolderImages | None = None

    def _classes(self) -> list[str]:
        """Training tree's class list, checked against ``num_classes``."""
        classes = find_classes(self.hparams.root)
        if len(classes) > self.hparams.num_classes:
            raise ValueError(
                f"{self.hparams.root} has {len(classes)} class folders but num_classes={self.hparams.num_classes}; "
                "raise num_classes or remove folders"
            )
        return classes

    def setup(self, stage: str | None = None) -> None:
        """Scan the trees once: the training set for ``fit`` (or no stage), the evaluation set always."""
        hp = self.hparams
        need_train = stage in (None, "fit") or hp.val_root is None
        if need_train and self.train_set is None:
            self.train_set = ImageFolderImages(
                hp.root, hp.resolution, hp.flip_prob if hp.random_flip else 0.0, hp.skip_corrupt, self._classes()
            )
        if self.val_set is None:
            if hp.val_root is None:
                self.val_set = self.train_set.with_flip_prob(0.0)
            else:
                classes = self.train_set.classes if self.train_set is not None else self._classes()
                self.val_set = ImageFolderImages(hp.val_root, hp.resolution, 0.0, hp.skip_corrupt, classes)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return train_loader(self.train_set, self.hparams.batch_size, self.hparams.num_workers, self.hparams.seed,
                            self.hparams.num_classes)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return eval_loader(self.val_set, self.hparams.batch_size, self.hparams.num_workers, self.hparams.num_classes)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
