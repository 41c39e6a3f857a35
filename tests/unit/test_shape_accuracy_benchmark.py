"""``benchmarks/shape_accuracy.py`` reads checkpoints and its classifier cache safely (issue 21, item 7): a
checkpoint's recipe name is looked up among the recipes the benchmark samples — never imported and called with the
checkpoint's arguments — and the cache is written atomically and rebuilt when it cannot be read."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from benchmarks import shape_accuracy
from speedrun_diffusion.datamodules.shape_classifier import ShapeClassifier
from speedrun_diffusion.lightning_modules import SiT


def test_a_checkpoint_naming_another_callable_is_refused_unrun(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("speedrun_diffusion.lightning_modules.cli.build_cli", lambda *a, **k: calls.append((a, k)))
    path = tmp_path / "evil.ckpt"
    torch.save({"recipe": "speedrun_diffusion.lightning_modules.cli.build_cli", "state_dict": {},
                "hyper_parameters": {"args": ["fit", "--config", "sit/tiny_cpu"], "run": True}}, path)
    with pytest.raises(ValueError, match=rf"{path} names recipe 'speedrun_diffusion.lightning_modules.cli.build_cli',"
                                         r" not one this benchmark samples: \[.*sit.SiT"):
        shape_accuracy.load_recipe(str(path))
    assert calls == []


def test_a_checkpoint_of_a_known_recipe_loads(tmp_path):
    model = SiT(model="SiT-S/4", input_size=16, in_channels=3, num_classes=4, depth=1, hidden_size=32, num_heads=2)
    path = tmp_path / "sit.ckpt"
    torch.save({"recipe": model.recipe_name(), "state_dict": model.state_dict(), "global_step": 7,
                "hyper_parameters": dict(model.hparams)}, path)
    recipe, used_ema, step = shape_accuracy.load_recipe(str(path))
    assert type(recipe) is SiT and not used_ema and step == 7
    assert all(torch.equal(a, b) for a, b in zip(recipe.state_dict().values(), model.state_dict().values()))


@pytest.fixture()
def quick_training(monkeypatch) -> list[int]:
    """Replace the ~3-minute classifier training by a fresh network; the list counts the trainings."""
    trained: list[int] = []

    def train(resolution: int) -> ShapeClassifier:
        trained.append(resolution)
        return ShapeClassifier()

    monkeypatch.setattr(shape_accuracy, "train_shape_classifier", train)
    return trained


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", b"not a checkpoint at all"])
def test_an_unreadable_classifier_cache_is_rebuilt(tmp_path, quick_training, content):
    cache = tmp_path / "runs" / "shape_classifier_16.pt"
    cache.parent.mkdir()
    cache.write_bytes(content)
    model = shape_accuracy.classifier_for(16, cache)
    assert quick_training == [16]
    reread = ShapeClassifier()
    reread.load_state_dict(torch.load(cache, weights_only=True))  # the cache now holds the rebuilt classifier
    assert all(torch.equal(a, b) for a, b in zip(reread.state_dict().values(), model.state_dict().values()))
    shape_accuracy.classifier_for(16, cache)
    assert quick_training == [16]  # a readable cache is used, not retrained


def test_the_classifier_cache_is_written_atomically(tmp_path, quick_training, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        if isinstance(f, (str, Path)):
            f = open(f, "wb")
        f.write(b"PK\x03\x04 half a classifier")
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    cache = tmp_path / "runs" / "shape_classifier_16.pt"
    with pytest.raises(OSError, match="No space left"):
        shape_accuracy.classifier_for(16, cache)
    assert not cache.exists() and list(cache.parent.iterdir()) == []  # no half-written cache for the next run
