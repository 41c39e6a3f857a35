"""Behaviour of the embedded synthetic data: determinism, splits, ranges, class-conditionality, loaders."""
from __future__ import annotations

import time
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from speedrun_diffusion.datamodules import SyntheticDataModule, SyntheticImages
from speedrun_diffusion.datamodules.pixels import model_range_to_uint8
from speedrun_diffusion.datamodules.shapes import SHAPES
from speedrun_diffusion.datamodules.synthetic import _SHAPE_EXTENT, COLOUR_SCHEMES, MAX_CLASSES, render_uint8


def _stack(dataset: SyntheticImages, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return torch.stack([item["image"] for item in items]), torch.stack([item["label"] for item in items])


def test_item_is_a_pure_function_of_seed_split_and_index() -> None:
    first, second = SyntheticImages(50, 32, seed=3), SyntheticImages(50, 32, seed=3)
    for index in (0, 7, 49, 13):
        assert torch.equal(first[index]["image"], second[index]["image"])
        assert torch.equal(first[index]["image"], first[index]["image"])
    assert torch.equal(first[-1]["image"], first[49]["image"])


def test_dataloader_workers_give_the_same_items_as_the_main_process() -> None:
    dataset = SyntheticImages(48, 32, num_classes=12)
    serial = list(DataLoader(dataset, batch_size=8, num_workers=0))
    parallel = list(DataLoader(dataset, batch_size=8, num_workers=2))
    assert len(serial) == len(parallel) == 6
    for a, b in zip(serial, parallel):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["label"], b["label"])


def test_splits_and_seeds_give_different_images() -> None:
    train, val = SyntheticImages(10, 32, split="train"), SyntheticImages(10, 32, split="val")
    other_seed = SyntheticImages(10, 32, seed=1)
    for index in range(10):
        # same label, different picture
        assert train[index]["label"] == val[index]["label"]
        assert (train[index]["image"] - val[index]["image"]).abs().mean() > 0.05
        assert (train[index]["image"] - other_seed[index]["image"]).abs().mean() > 0.05


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_item_shape_dtype_and_range(resolution: int) -> None:
    dataset = SyntheticImages(6, resolution)
    for index in range(len(dataset)):
        item = dataset[index]
        image, label = item["image"], item["label"]
        assert image.shape == (3, resolution, resolution) and image.dtype == torch.float32
        assert label.shape == () and label.dtype == torch.int64
        assert image.min() >= -1.0 and image.max() <= 1.0
        # a picture, not a flat field
        assert image.std() > 0.05
        # the float image is exactly the uint8 image mapped by x / 127.5 - 1
        pixels = dataset.image_uint8(index)
        assert pixels.dtype == np.uint8 and pixels.shape == (resolution, resolution, 3)
        expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1.0
        assert torch.allclose(image, expected, atol=1e-6)
        assert np.array_equal(model_range_to_uint8(image), pixels)


def test_resolution_512_once() -> None:
    image = SyntheticImages(1, 512)[0]["image"]
    assert image.shape == (3, 512, 512)
    assert -1.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05


def test_resolutions_render_the_same_scene() -> None:
    # the scene is drawn in frame coordinates, so a 128 px render box-downsampled to 32 px ~ the 32 px render
    small = SyntheticImages(4, 32)
    large = SyntheticImages(4, 128)
    for index in range(4):
        pooled = torch.nn.functional.avg_pool2d(large[index]["image"][None], 4)[0]
        assert (pooled - small[index]["image"]).abs().mean() < 0.04


def test_labels_are_balanced_index_mod_num_classes() -> None:
    dataset = SyntheticImages(103, 32, num_classes=10)
    labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    assert labels == [i % 10 for i in range(103)]
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 10 and counts.max() <= 11


def test_class_names_cover_all_shape_colour_pairs() -> None:
    names = SyntheticImages(1, 32, num_classes=MAX_CLASSES).class_names
    assert MAX_CLASSES == len(SHAPES) * len(COLOUR_SCHEMES) >= 10
    assert len(set(names)) == MAX_CLASSES
    assert SyntheticImages(1, 32, num_classes=10).class_names == names[:10]
    # the first classes all have different shapes
    assert len({name.split()[1] for name in names[: len(SHAPES)]}) == len(SHAPES)


def test_data_is_class_conditional_nearest_class_mean_beats_chance() -> None:
    """A nearest-class-mean classifier on background-removed pixels, fit on train, tested on val."""
    num_classes = 10
    train_images, train_labels = _stack(SyntheticImages(400, 32, num_classes, split="train"), range(400))
    val_images, val_labels = _stack(SyntheticImages(200, 32, num_classes, split="val"), range(200))

    def features(images: torch.Tensor) -> torch.Tensor:
        # the median colour of an image is its background: subtracting it leaves the shape
        background = images.flatten(2).median(dim=2).values[..., None, None]
        return (images - background).flatten(1)

    train_features, val_features = features(train_images), features(val_images)
    class_means = torch.stack([train_features[train_labels == k].mean(0) for k in range(num_classes)])
    # every class is present and its mean image differs from every other class's
    assert torch.equal(torch.unique(train_labels), torch.arange(num_classes))
    distances = torch.cdist(class_means, class_means) + torch.eye(num_classes) * 1e9
    assert distances.min() > 0.1 * class_means.norm(dim=1).mean()
    accuracy = (torch.cdist(val_features, class_means).argmin(1) == val_labels).float().mean().item()
    print(f"nearest-class-mean accuracy on val: {accuracy:.2f} (chance {1 / num_classes:.2f})")
    assert accuracy > 3.0 / num_classes


@pytest.mark.parametrize("split", ["train", "val"])
def test_item_follows_the_documented_class_and_seed_convention(split: str) -> None:
    """Item i of class k is render_uint8(shape k mod 8, hue of scheme k mod 5, R, default_rng([seed, split, i]))."""
    dataset = SyntheticImages(60, 32, num_classes=MAX_CLASSES, seed=11, split=split)
    shapes, hues = list(SHAPES.values()), list(COLOUR_SCHEMES.values())
    for index in (0, 5, 13, 39, 47):
        k = index % MAX_CLASSES
        rng = np.random.default_rng([11, {"train": 0, "val": 1}[split], index])
        expected = render_uint8(shapes[k % len(shapes)], hues[k % len(hues)], 32, rng)
        assert np.array_equal(dataset.image_uint8(index), expected)
    # same pose and background, another shape: a visibly different picture
    same_draws = [render_uint8(shapes[s], hues[0], 32, np.random.default_rng(4)) for s in range(len(shapes))]
    for first in range(len(shapes)):
        for second in range(first + 1, len(shapes)):
            changed = np.abs(same_draws[first].astype(int) - same_draws[second].astype(int)).max(axis=2) > 40
            assert changed.sum() >= 15, (first, second)


def test_shapes_have_distinct_silhouettes() -> None:
    # at a fixed pose every pair differs on >= 10 % of their union (circle vs square is the closest,
    # ~16 %: about 20 pixels of a 32 px render); identical shapes would give IoU 1
    grid = np.linspace(-1.3, 1.3, 161, dtype=np.float32)
    u, v = np.meshgrid(grid, grid)
    masks = {name: sdf(u, v) < 0 for name, sdf in SHAPES.items()}
    names = list(masks)
    for i, first in enumerate(names):
        assert masks[first].mean() > 0.1, first
        for second in names[i + 1 :]:
            union = np.logical_or(masks[first], masks[second]).sum()
            iou = np.logical_and(masks[first], masks[second]).sum() / union
            assert iou < 0.9, (first, second, iou)


@pytest.mark.parametrize("name", list(SHAPES))
def test_shape_sdfs_are_distance_bounds_within_the_render_window(name: str) -> None:
    """The renderer's antialiasing needs |grad d| <= 1; its bounding window needs the outline inside _SHAPE_EXTENT."""
    sdf = SHAPES[name]
    step = 0.01
    grid = np.arange(-1.6, 1.6, step, dtype=np.float32)
    u, v = np.meshgrid(grid, grid)
    distance = sdf(u, v)
    assert np.abs(np.diff(distance, axis=0)).max() <= step * 1.01
    assert np.abs(np.diff(distance, axis=1)).max() <= step * 1.01
    near_or_inside = distance < 0.05
    assert near_or_inside.any()
    assert np.hypot(u, v)[near_or_inside].max() < _SHAPE_EXTENT


def test_throughput_at_32_px() -> None:
    dataset = SyntheticImages(400, 32)
    dataset[0]
    start = time.perf_counter()
    for index in range(400):
        dataset[index]
    rate = 400 / (time.perf_counter() - start)
    print(f"synthetic throughput at 32 px: {rate:.0f} images/s on one process")
    # generous: the target is >= 500 images/s on one core; this only catches a pathological slowdown
    assert rate > 100


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"resolution": 8}, "resolution"),
        ({"resolution": 2048}, "resolution"),
        ({"resolution": 32.0}, "resolution"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": MAX_CLASSES + 1}, "num_classes"),
        ({"seed": -1}, "seed"),
        ({"split": "test"}, "split"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs: dict, needle: str) -> None:
    arguments = {"num_samples": 4, **kwargs}
    with pytest.raises(ValueError, match=needle):
        SyntheticImages(**arguments)


def test_index_out_of_range_raises_index_error() -> None:
    dataset = SyntheticImages(5, 32)
    with pytest.raises(IndexError):
        dataset[5]
    with pytest.raises(IndexError):
        dataset.image_uint8(-6)


def test_datamodule_properties_and_hyperparameters() -> None:
    module = SyntheticDataModule(resolution=64, num_classes=12, train_size=40, val_size=10, batch_size=8, seed=5)
    assert module.num_classes == 12 and module.resolution == 64
    assert module.image_shape == (3, 64, 64)
    assert module.hparams.train_size == 40 and module.hparams.seed == 5 and module.hparams.val_batch_size is None
    assert len(module.class_names) == 12
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticDataModule(num_classes=0)
    with pytest.raises(ValueError, match="batch_size"):
        SyntheticDataModule(batch_size=0)


def test_train_loader_is_seeded_shuffled_and_drops_the_last_batch() -> None:
    def epoch_labels(seed: int) -> list[torch.Tensor]:
        module = SyntheticDataModule(resolution=32, num_classes=10, train_size=70, val_size=10, batch_size=32, seed=seed)
        module.setup("fit")
        batches = list(module.train_dataloader())
        assert len(batches) == 2
        for batch in batches:
            assert batch["image"].shape == (32, 3, 32, 32) and batch["image"].dtype == torch.float32
            assert batch["label"].shape == (32,) and batch["label"].dtype == torch.int64
        return [batch["label"] for batch in batches]

    first, again, other = epoch_labels(0), epoch_labels(0), epoch_labels(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    ordered = torch.arange(32) % 10
    assert not torch.equal(first[0], ordered)


def test_evaluation_loaders_are_ordered_and_keep_every_item() -> None:
    module = SyntheticDataModule(num_classes=10, train_size=20, val_size=10, batch_size=16, val_batch_size=4)
    for loader in (module.val_dataloader(), module.test_dataloader(), module.predict_dataloader()):
        batches = list(loader)
        assert [len(batch["label"]) for batch in batches] == [4, 4, 2]
        assert torch.equal(torch.cat([batch["label"] for batch in batches]), torch.arange(10))
    first_val = next(iter(module.val_dataloader()))["image"][0]
    assert torch.equal(first_val, SyntheticImages(10, 32, 10, 0, "val")[0]["image"])


def test_worker_loaders_are_persistent() -> None:
    module = SyntheticDataModule(train_size=16, val_size=8, batch_size=4, num_workers=2)
    assert module.train_dataloader().persistent_workers and module.val_dataloader().persistent_workers
    assert not SyntheticDataModule(train_size=16, val_size=8, batch_size=4).train_dataloader().persistent_workers


def test_labels_never_use_the_null_class_id() -> None:
    # the id num_classes is reserved for "no class" (DESIGN.md): data labels stay in [0, num_classes)
    labels = torch.cat([batch["label"] for batch in SyntheticDataModule(num_classes=7, val_size=30).val_dataloader()])
    assert labels.min() == 0 and labels.max() == 6


def quiet_trainer_arguments(root: Path) -> dict:
    """A CPU Trainer without logger, checkpoints, progress bar or summary."""
    return {
        "default_root_dir": root,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
    }


class MeanColourClassifier(lightning.LightningModule):
    """Smallest module that consumes the batch contract: a linear classifier on mean colours."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, num_classes)
        self.seen_labels: list[torch.Tensor] = []

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.int64
        return torch.nn.functional.cross_entropy(self.linear(batch["image"].mean((2, 3))), batch["label"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen_labels.append(batch["label"])
        return self._loss(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_datamodule_drives_a_lightning_trainer(tmp_path: Path) -> None:
    module = SyntheticDataModule(num_classes=5, train_size=64, val_size=16, batch_size=8)
    model = MeanColourClassifier(module.num_classes)
    trainer = lightning.Trainer(**quiet_trainer_arguments(tmp_path), max_steps=3, limit_val_batches=1)
    trainer.fit(model, datamodule=module)
    assert trainer.global_step == 3 and len(model.seen_labels) == 3
    assert all(labels.shape == (8,) for labels in model.seen_labels)
    assert trainer.datamodule.hparams.num_classes == 5
