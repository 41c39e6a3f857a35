"""Behaviour of the ImageFolder / ADM-preprocessed ImageNet data on a tiny tree built in tmp_path."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from speedrun_diffusion.datamodules import ImageFolderImages, ImageNetDataModule, adm_center_crop
from speedrun_diffusion.datamodules.imagenet import CorruptImageError, UnsupportedImageError
from speedrun_diffusion.datamodules.pixels import uint8_to_model_range
from tests.unit.datamodules.test_synthetic import MeanColourClassifier, quiet_trainer_arguments

RESOLUTION = 64


def _noise_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Smooth-ish random RGB picture with a left-to-right ramp, so a horizontal flip is visible."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    pixels = rng.integers(0, 55, (height, width, 3)).astype(np.float32) + ramp
    return Image.fromarray(pixels.astype(np.uint8)).convert(mode)


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    _noise_image(300, 200, seed=9).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """root/<class>/<files>: three classes, odd sizes (one large enough for two BOX halvings), mixed formats."""
    root = tmp_path / "train"
    for name in ("n003_fox", "n001_cat", "n002_dog"):
        (root / name).mkdir(parents=True)
    _noise_image(300, 200, 0).save(root / "n001_cat" / "a.JPG")
    _noise_image(64, 80, 1, mode="L").save(root / "n001_cat" / "b.png")
    _noise_image(1100, 700, 2).save(root / "n002_dog" / "c.png")
    _noise_image(120, 90, 3, mode="RGBA").save(root / "n002_dog" / "d.webp")
    (root / "n003_fox" / "deeper").mkdir()
    _noise_image(257, 301, 4).save(root / "n003_fox" / "deeper" / "e.bmp")
    _noise_image(333, 222, 5).save(root / "n003_fox" / "f.jpeg")
    # ignored: not an image extension, hidden file, hidden directory at the root
    (root / "n003_fox" / "notes.txt").write_text("not an image")
    _noise_image(100, 100, 6).save(root / "n003_fox" / ".hidden.jpg")
    (root / ".ipynb_checkpoints").mkdir()
    return root


def test_classes_labels_and_files_follow_the_imagefolder_layout(tree: Path) -> None:
    dataset = ImageFolderImages(tree, RESOLUTION)
    assert dataset.classes == ["n001_cat", "n002_dog", "n003_fox"]
    names = [(Path(path).name, label) for path, label in dataset.samples]
    assert names == [("a.JPG", 0), ("b.png", 0), ("c.png", 1), ("d.webp", 1), ("e.bmp", 2), ("f.jpeg", 2)]


def test_items_are_rgb_float_in_model_range(tree: Path) -> None:
    dataset = ImageFolderImages(tree, RESOLUTION)
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (3, RESOLUTION, RESOLUTION) and item["image"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["label"].shape == ()
        assert item["label"] == dataset.samples[index][1]
        assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
        assert item["image"].std() > 0.05


def test_item_is_the_adm_crop_of_the_rgb_file(tree: Path) -> None:
    dataset = ImageFolderImages(tree, RESOLUTION)
    for index in (0, 1, 2, 3):
        path = dataset.samples[index][0]
        expected = uint8_to_model_range(np.asarray(adm_center_crop(Image.open(path).convert("RGB"), RESOLUTION)))
        assert torch.equal(dataset.load(index, flip=False)["image"], expected)


@pytest.mark.parametrize(
    ("size", "resolution"),
    [((300, 200), 64), ((1100, 700), 128), ((1101, 701), 64), ((64, 80), 128), ((257, 301), 256), ((5, 3), 2)],
)
def test_adm_center_crop_is_square_at_the_resolution(size: tuple[int, int], resolution: int) -> None:
    crop = adm_center_crop(_noise_image(*size, seed=0), resolution)
    assert crop.size == (resolution, resolution) and crop.mode == "RGB"


# Hand-worked ADM geometry (width, height, resolution) -> (scaled width, scaled height, left, top):
#   1100x700 @128: short 700 >= 256 -> 550x350; 350 >= 256 -> 275x175; 175 < 256 stop;
#                  bicubic x128/175 -> round(201.14)=201 x 128; left (201-128)//2 = 36, top 0.
#   300x200 @64:   200 >= 128 -> 150x100; bicubic x0.64 -> 96x64; left 16, top 0.
#   200x300 @64:   portrait of the above -> 64x96; left 0, top 16.
#   64x80 @128:    no halving (upscale); x2 -> 128x160; left 0, top 16.
#   18x16 @40:     no halving; x2.5 -> 45x40; left (45-40)//2 = 2, top 0.
#   26x20 @24:     x1.2 -> round(31.2)=31 x 24; left 3.
#   18x8 @20:      x2.5 -> 45x20; left (45-20)//2 = 12.
#   9x8 @20:       x2.5 -> 22.5, which Python's round takes to the even 22 (not 23) x 20; left 1.
ADM_GEOMETRY = [
    ((1100, 700, 128), (201, 128, 36, 0)),
    ((300, 200, 64), (96, 64, 16, 0)),
    ((200, 300, 64), (64, 96, 0, 16)),
    ((64, 80, 128), (128, 160, 0, 16)),
    ((18, 16, 40), (45, 40, 2, 0)),
    ((26, 20, 24), (31, 24, 3, 0)),
    ((18, 8, 20), (45, 20, 12, 0)),
    ((9, 8, 20), (22, 20, 1, 0)),
]


@pytest.mark.parametrize(("source", "geometry"), ADM_GEOMETRY)
def test_adm_center_crop_offsets_read_from_a_coordinate_image(
    source: tuple[int, int, int], geometry: tuple[int, int, int, int]
) -> None:
    """Crop 32-bit float images whose pixel value is its own x (or y) coordinate.

    Box and bicubic resampling reproduce a linear function exactly away from the borders, so an
    output pixel (i, j) must read the source coordinate it maps to: with the whole source extent
    mapped onto the scaled size, x = (j + left + 0.5) * width / scaled_width - 0.5. A wrong offset,
    rounding or halving count moves these values by a large fraction of a step (or more).
    """
    width, height, resolution = source
    scaled_width, scaled_height, left, top = geometry
    xs = np.tile(np.arange(width, dtype=np.float32), (height, 1))
    ys = np.tile(np.arange(height, dtype=np.float32)[:, None], (1, width))
    crop_x = np.asarray(adm_center_crop(Image.fromarray(xs), resolution))
    crop_y = np.asarray(adm_center_crop(Image.fromarray(ys), resolution))
    assert crop_x.shape == crop_y.shape == (resolution, resolution)

    step_x, step_y = width / scaled_width, height / scaled_height
    expected_x = (np.arange(resolution) + left + 0.5) * step_x - 0.5
    expected_y = (np.arange(resolution) + top + 0.5) * step_y - 0.5
    # bicubic taps reach 2 pixels of the resampled-from image on each side; keep clear of the borders
    margin = 2.5 * max(step_x, step_y, 1.0) * (2 if min(width, height) >= 2 * resolution else 1)
    inner_x = (expected_x > margin) & (expected_x < width - 1 - margin)
    inner_y = (expected_y > margin) & (expected_y < height - 1 - margin)
    assert inner_x.sum() >= 3 or inner_y.sum() >= 3
    row = crop_x[resolution // 2]
    column = crop_y[:, resolution // 2]
    # a bicubic kernel stretched by a non-integer factor leaves a small ripple (~2 % of a step);
    # a wrong offset is off by a whole step
    np.testing.assert_allclose(row[inner_x], expected_x[inner_x], atol=max(0.02, 0.05 * step_x))
    np.testing.assert_allclose(column[inner_y], expected_y[inner_y], atol=max(0.02, 0.05 * step_y))


@pytest.mark.parametrize(("width", "height"), [(64, 64), (64, 96)])
def test_adm_center_crop_halvings_are_box_averages(width: int, height: int) -> None:
    """At 4x the resolution ADM halves twice with a box filter, so the result is the mean of 4x4 blocks.

    The short side then already equals the resolution (bicubic is the identity) and the crop is central.
    """
    resolution = 16
    pixels = np.random.default_rng(0).random((height, width)).astype(np.float32)
    blocks = pixels.reshape(height // 4, 4, width // 4, 4).mean(axis=(1, 3))
    top = (height // 4 - resolution) // 2
    left = (width // 4 - resolution) // 2
    expected = blocks[top : top + resolution, left : left + resolution]
    crop = np.asarray(adm_center_crop(Image.fromarray(pixels), resolution))
    np.testing.assert_allclose(crop, expected, atol=1e-5)


def test_flip_is_applied_about_half_the_time_when_enabled(tree: Path) -> None:
    dataset = ImageFolderImages(tree, RESOLUTION, flip_prob=0.5)
    plain = dataset.load(0, flip=False)["image"]
    mirrored = dataset.load(0, flip=True)["image"]
    assert torch.equal(mirrored, torch.flip(plain, dims=[2])) and not torch.equal(mirrored, plain)
    draws = [dataset[0]["image"] for _ in range(200)]
    flipped = sum(torch.equal(image, mirrored) for image in draws)
    assert sum(torch.equal(image, plain) for image in draws) + flipped == 200
    assert 65 <= flipped <= 135


def test_datamodule_flips_train_only(tree: Path) -> None:
    module = ImageNetDataModule(str(tree), resolution=RESOLUTION, batch_size=2, num_workers=0)
    module.setup("fit")
    assert module.train_set.flip_prob == 0.5
    assert module.val_set.flip_prob == 0.0
    first = module.val_set[0]["image"]
    assert all(torch.equal(module.val_set[0]["image"], first) for _ in range(40))
    first_val_batch = next(iter(module.val_dataloader()))["image"]
    assert torch.equal(first_val_batch[0], module.val_set.load(0, flip=False)["image"])
    unflipped = ImageNetDataModule(str(tree), resolution=RESOLUTION, random_flip=False, num_workers=0)
    unflipped.setup("fit")
    assert unflipped.train_set.flip_prob == 0.0


def test_datamodule_batches_and_loader_conventions(tree: Path) -> None:
    module = ImageNetDataModule(str(tree), resolution=32, batch_size=4, num_workers=0, num_classes=10)
    assert module.image_shape == (3, 32, 32) and module.num_classes == 10
    assert module.hparams.root == str(tree)
    train_batches = list(module.train_dataloader())
    # 6 images, batch 4, drop_last
    assert len(train_batches) == 1
    assert train_batches[0]["image"].shape == (4, 3, 32, 32) and train_batches[0]["label"].dtype == torch.int64
    for loader in (module.val_dataloader(), module.test_dataloader(), module.predict_dataloader()):
        labels = torch.cat([batch["label"] for batch in loader])
        assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    workers = ImageNetDataModule(str(tree), resolution=32, batch_size=4, num_workers=2)
    assert workers.train_dataloader().persistent_workers


def test_val_root_is_labelled_with_the_training_classes(tree: Path, tmp_path: Path) -> None:
    val_root = tmp_path / "val"
    (val_root / "n003_fox").mkdir(parents=True)
    _noise_image(90, 90, 7).save(val_root / "n003_fox" / "v.png")
    module = ImageNetDataModule(str(tree), resolution=32, val_root=str(val_root), num_workers=0)
    labels = torch.cat([batch["label"] for batch in module.val_dataloader()])
    assert labels.tolist() == [2]
    (val_root / "n999_unknown").mkdir()
    _noise_image(90, 90, 8).save(val_root / "n999_unknown" / "w.png")
    with pytest.raises(ValueError, match="n999_unknown"):
        ImageNetDataModule(str(tree), resolution=32, val_root=str(val_root), num_workers=0).setup("fit")


def test_more_class_folders_than_num_classes_is_an_error(tree: Path) -> None:
    module = ImageNetDataModule(str(tree), resolution=32, num_classes=2, num_workers=0)
    with pytest.raises(ValueError, match="3 class folders but num_classes=2"):
        module.setup("fit")


@pytest.mark.parametrize("layout", ["missing", "empty", "no_images"])
def test_missing_or_empty_root_names_the_path_and_layout(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "imagenet" / "train"
    if layout != "missing":
        root.mkdir(parents=True)
    if layout == "no_images":
        (root / "n001").mkdir()
        (root / "n001" / "readme.txt").write_text("no pictures here")
    with pytest.raises(FileNotFoundError) as error:
        ImageFolderImages(root, RESOLUTION)
    assert str(root) in str(error.value) and "<class_dir>/<image files>" in str(error.value)
    with pytest.raises(FileNotFoundError, match="<class_dir>"):
        ImageNetDataModule(str(root), num_workers=0).setup("fit")


@pytest.fixture()
def corrupt_tree(tree: Path) -> Path:
    """The tiny tree plus a truncated JPEG and a garbage .png (sorted right before good files)."""
    (tree / "n001_cat" / "a_truncated.jpg").write_bytes(_truncated_jpeg())
    (tree / "n002_dog" / "c_garbage.png").write_bytes(b"\x89PNG this is not really a png" * 20)
    return tree


def test_corrupt_files_raise_naming_the_file(corrupt_tree: Path) -> None:
    dataset = ImageFolderImages(corrupt_tree, RESOLUTION)
    names = [Path(path).name for path, _ in dataset.samples]
    for bad in ("a_truncated.jpg", "c_garbage.png"):
        with pytest.raises(CorruptImageError, match=bad) as error:
            dataset[names.index(bad)]
        assert isinstance(error.value, ValueError)
    # the good neighbours still load
    assert dataset[names.index("a.JPG")]["image"].shape == (3, RESOLUTION, RESOLUTION)


def test_skip_corrupt_replaces_by_the_next_valid_image_and_counts(corrupt_tree: Path) -> None:
    dataset = ImageFolderImages(corrupt_tree, RESOLUTION, skip_corrupt=True)
    names = [Path(path).name for path, _ in dataset.samples]
    truncated, garbage = names.index("a_truncated.jpg"), names.index("c_garbage.png")
    assert dataset.num_skipped == 0
    replacement = dataset.load(truncated, flip=False)
    assert torch.equal(replacement["image"], dataset.load(truncated + 1, flip=False)["image"])
    assert dataset.num_skipped == 1
    items = [dataset.load(index, flip=False) for index in range(len(dataset))]
    assert len(items) == len(dataset) == 8
    assert torch.equal(items[garbage]["image"], items[garbage + 1]["image"])
    # each unreadable file counts once, however often it is met
    assert dataset.num_skipped == 2
    assert {Path(path).name for path in dataset.skipped_files} == {"a_truncated.jpg", "c_garbage.png"}


def test_skip_corrupt_with_no_readable_file_still_raises(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "broken.jpg").write_bytes(_truncated_jpeg())
    dataset = ImageFolderImages(tmp_path, RESOLUTION, skip_corrupt=True)
    with pytest.raises(CorruptImageError, match="no readable image"):
        dataset[0]


def test_datamodule_drives_lightning_fit_and_validate(tree: Path, tmp_path: Path) -> None:
    module = ImageNetDataModule(str(tree), resolution=32, batch_size=2, num_workers=0, num_classes=3)
    model = MeanColourClassifier(module.num_classes)
    trainer = lightning.Trainer(**quiet_trainer_arguments(tmp_path), max_epochs=1)
    trainer.fit(model, datamodule=module)
    # 6 images in batches of 2, every image seen once
    assert trainer.global_step == 3
    assert sorted(torch.cat(model.seen_labels).tolist()) == [0, 0, 1, 1, 2, 2]
    # validate alone, with a separate val tree: only that tree is read, labels from the training classes
    val_root = tmp_path / "val"
    (val_root / "n002_dog").mkdir(parents=True)
    _noise_image(50, 70, 11).save(val_root / "n002_dog" / "v.jpg")
    val_module = ImageNetDataModule(str(tree), resolution=32, batch_size=2, val_root=str(val_root), num_workers=0)
    results = lightning.Trainer(**quiet_trainer_arguments(tmp_path)).validate(model, datamodule=val_module)
    assert val_module.train_set is None and len(val_module.val_set) == 1
    assert "val_loss" in results[0]


def decompression_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid ~100-byte PNG whose header claims ``width`` x ``height`` 1-bit pixels: decoding it would allocate
    hundreds of MB (PIL refuses above 2x Image.MAX_IMAGE_PIXELS and only warns between 1x and 2x)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30000, 10000])  # above 2x the limit: PIL raises; between 1x and 2x: PIL warns
def test_a_decompression_bomb_is_an_unsupported_image_naming_the_file(tmp_path: Path, side: int) -> None:
    bomb = tmp_path / "a" / "bomb.png"
    bomb.parent.mkdir()
    bomb.write_bytes(decompression_bomb(side, side))
    with pytest.raises(UnsupportedImageError, match=rf"image file {bomb} claims more pixels than PIL's "
                                                    r"decompression-bomb limit"):
        ImageFolderImages(tmp_path, RESOLUTION)[0]


def test_skip_corrupt_skips_bombs_and_any_pil_error_and_names_them_in_the_log(
        corrupt_tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (corrupt_tree / "n001_cat" / "a_bomb.png").write_bytes(decompression_bomb())
    (corrupt_tree / "n002_dog" / "c_odd.png").write_bytes((corrupt_tree / "n001_cat" / "b.png").read_bytes())
    real_load = Image.Image.load

    def load(image):  # a decoder failing with an error outside OSError / ValueError (PIL plugins raise many kinds)
        if Path(getattr(image, "filename", "")).name == "c_odd.png":
            raise struct.error("unpack requires a buffer of 4 bytes")
        return real_load(image)

    monkeypatch.setattr(Image.Image, "load", load)
    strict = ImageFolderImages(corrupt_tree, RESOLUTION)
    odd = [Path(path).name for path, _ in strict.samples].index("c_odd.png")
    with pytest.raises(CorruptImageError, match=r"cannot decode image file .*c_odd.png: error: unpack requires"):
        strict[odd]
    dataset = ImageFolderImages(corrupt_tree, RESOLUTION, skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="speedrun_diffusion.datamodules.imagenet"):
        items = [dataset.load(index, flip=False) for index in range(len(dataset))]
    assert len(items) == len(dataset) == 10
    skipped = {"a_bomb.png", "a_truncated.jpg", "c_garbage.png", "c_odd.png"}
    assert {Path(path).name for path in dataset.skipped_files} == skipped and dataset.num_skipped == 4
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 4 and all("skip_corrupt: skipped an unreadable image" in m for m in logged)
    assert {name for name in skipped for m in logged if name in m} == skipped and "(4 so far" in logged[-1]
