"""Bad input (docs/fault-tolerance.md): every case gives one clear error naming the file or config key, raised
where the input enters (datamodules for files and labels, the recipe for data/model and checkpoint mismatches)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from speedrun_diffusion.datamodules import ImageNetDataModule, SyntheticDataModule
from speedrun_diffusion.datamodules.imagenet import CorruptImageError, ImageFolderImages, UnsupportedImageError
from speedrun_diffusion.datamodules.loaders import LabelRangeError, train_loader
from speedrun_diffusion.lightning_modules import SiT
from speedrun_diffusion.lightning_modules.cli import build_cli
from speedrun_diffusion.lightning_modules.recipe import CheckpointMismatchError, check_data_fits
from tests.helpers import ROOT
from tests.helpers.toy_recipe import ToyRecipe

TINY = str(ROOT / "configs" / "sit" / "tiny_cpu.yaml")
FAST = ["--model.init_args.depth", "1", "--model.init_args.hidden_size", "32", "--model.init_args.num_heads", "2",
        "--model.init_args.sampling.num_steps", "2", "--data.init_args.resolution", "16",
        "--data.init_args.batch_size", "4", "--data.init_args.val_size", "8", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--trainer.max_steps", "1"]


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


def _png(path: Path, size=(40, 30), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def _first_item_error(root: Path, exc: type[Exception]) -> str:
    dataset = ImageFolderImages(root, resolution=16)
    with pytest.raises(exc) as info:
        next(iter(train_loader(dataset, batch_size=1, num_workers=0, seed=0)))
    return str(info.value)


# ---------------------------------------------------------------- image files
def test_corrupt_image_file_names_the_file(tmp_path):
    bad = tmp_path / "a" / "img.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    assert str(bad) in _first_item_error(tmp_path, CorruptImageError)


def test_truncated_image_file_names_the_file(tmp_path):
    good = _png(tmp_path / "a" / "img.jpg", size=(64, 64))
    Image.open(good).save(good, format="JPEG")
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    assert str(good) in _first_item_error(tmp_path, CorruptImageError)


def test_high_bit_depth_image_is_refused_by_name(tmp_path):
    bad = _png(tmp_path / "a" / "depth.png", mode="I;16")
    message = _first_item_error(tmp_path, UnsupportedImageError)
    assert str(bad) in message and "I;16" in message


def test_tiny_image_is_refused_by_name(tmp_path):
    bad = _png(tmp_path / "a" / "sliver.png", size=(300, 3))
    message = _first_item_error(tmp_path, UnsupportedImageError)
    assert str(bad) in message and "300x3" in message


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_8bit_modes_and_sizes_are_converted(tmp_path, mode):
    _png(tmp_path / "a" / "img.png" if mode != "CMYK" else tmp_path / "a" / "img.jpg", size=(23, 57), mode=mode)
    item = ImageFolderImages(tmp_path, resolution=16)[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].abs().max() <= 1


def test_unsupported_images_are_skipped_and_counted_with_skip_corrupt(tmp_path):
    _png(tmp_path / "a" / "0_bad.png", mode="I;16")
    _png(tmp_path / "a" / "1_good.png")
    dataset = ImageFolderImages(tmp_path, resolution=16, skip_corrupt=True)
    assert dataset[0]["image"].shape == (3, 16, 16)
    assert dataset.num_skipped == 1 and str(tmp_path / "a" / "0_bad.png") in dataset.skipped_files


# ---------------------------------------------------------------- labels
class LabelledNoise(Dataset):
    def __init__(self, labels: list[int]) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.zeros(3, 4, 4), "label": torch.tensor(self.labels[i])}


@pytest.mark.parametrize("bad", [10, 12, -1])
def test_label_out_of_range_names_the_label_and_data_set(bad):
    loader = train_loader(LabelledNoise([1, bad, 3, 4]), batch_size=4, num_workers=0, seed=0, num_classes=10)
    with pytest.raises(LabelRangeError, match=rf"label {bad} from LabelledNoise is outside \[0, 10\)"):
        next(iter(loader))


def test_datamodule_with_more_classes_than_the_model_is_refused_by_key():
    model = SiT(model="SiT-S/4", input_size=16, num_classes=10, depth=1, hidden_size=32, num_heads=2)
    with pytest.raises(ValueError, match=r"data.init_args.num_classes=20.*num_classes=10"):
        check_data_fits(model, SyntheticDataModule(resolution=16, num_classes=20))
    with pytest.raises(ValueError, match=r"\(3, 32, 32\).*data.init_args.resolution.*\(3, 16, 16\)"):
        check_data_fits(model, SyntheticDataModule(resolution=32, num_classes=10))
    check_data_fits(model, SyntheticDataModule(resolution=16, num_classes=10))


def test_folder_with_more_classes_than_num_classes_is_refused(tmp_path):
    for name in ("a", "b", "c"):
        _png(tmp_path / name / "img.png")
    with pytest.raises(ValueError, match=r"3 class folders but num_classes=2"):
        ImageNetDataModule(str(tmp_path), resolution=16, batch_size=1, num_workers=0, num_classes=2).setup("fit")


# ---------------------------------------------------------------- missing weight files
def test_missing_weight_files_are_named(tmp_path):
    from speedrun_diffusion.lightning_modules.checkpoints import load_official_checkpoint
    from speedrun_diffusion.lightning_modules.weights import read_state_dict

    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_official_checkpoint(missing, "srdit.sit")
    with pytest.raises(FileNotFoundError, match=str(missing.with_suffix(".safetensors"))):
        load_official_checkpoint(missing.with_suffix(".safetensors"), "srdit.invae")
    with pytest.raises(FileNotFoundError, match=str(missing)):
        read_state_dict(missing, "Inception weights")


# ---------------------------------------------------------------- config keys
@pytest.mark.parametrize("section, key", [("trainer", "max_step"), ("model.init_args", "dept"),
                                          ("data.init_args", "batchsize"), ("", "seed_everythin")])
def test_mistyped_yaml_key_is_rejected_by_name(tmp_path, capsys, section, key):
    yaml_text = f"{key}: 3\n"
    for part in reversed(section.split(".") if section else []):
        yaml_text = f"{part}:\n" + "".join(f"  {line}\n" for line in yaml_text.splitlines())
    extra = tmp_path / "typo.yaml"
    extra.write_text(yaml_text)
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", TINY, "--config", str(extra)], run=False)
    assert key in capsys.readouterr().err


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_of_another_recipe_names_the_file_and_both_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    from tests.helpers.toy_recipe import toy_loader

    trainer.fit(ToyRecipe(), train_dataloaders=toy_loader())
    foreign = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(foreign)
    with pytest.raises(CheckpointMismatchError) as info:
        build_cli(["fit", "--config", TINY, *FAST, "--ckpt_path", str(foreign)])
    message = str(info.value)
    assert str(foreign) in message and "ToyRecipe" in message and "speedrun_diffusion.lightning_modules.sit.SiT" in message


def test_checkpoint_of_another_size_names_the_file_and_keys(tmp_path):
    import lightning as L

    def sit(hidden: int) -> SiT:
        return SiT(model="SiT-S/4", input_size=16, num_classes=10, depth=1, hidden_size=hidden, num_heads=2,
                   sampling=dict(num_steps=2))

    data = SyntheticDataModule(resolution=16, num_classes=10, train_size=8, val_size=4, batch_size=4)
    options = dict(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
    trainer = L.Trainer(**options)
    trainer.fit(sit(32), datamodule=data)
    ckpt = tmp_path / "small.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(CheckpointMismatchError) as info:
        L.Trainer(**options).fit(sit(64), datamodule=data, ckpt_path=ckpt)
    message = str(info.value)
    assert str(ckpt) in message and "shape mismatches" in message and "(32" in message and "(64" in message


def test_optimizer_and_lr_scheduler_flags_are_refused_with_the_group_to_use(capsys):
    for flags in (["--optimizer=Adam"], ["--lr_scheduler", "StepLR"]):
        with pytest.raises(SystemExit, match="would replace the recipe's AdamW and schedule.*optimizer.lr"):
            build_cli(["fit", "--config", TINY, *flags], run=False)
