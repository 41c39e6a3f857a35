"""One-line errors naming the file or value (issue 21, item 8): empty, truncated or foreign checkpoint files through
every reader (torch names no file: a bare EOFError, a miniz RuntimeError), and labels ``sample()`` cannot embed
(torch: an IndexError deep in the network, a device-side assert on CUDA)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_diffusion.callbacks.checkpointing import AtomicCheckpointIO
from speedrun_diffusion.datamodules.loaders import LabelRangeError
from speedrun_diffusion.lightning_modules import SiT
from speedrun_diffusion.lightning_modules.diffusion import EulerODE
from speedrun_diffusion.lightning_modules.weights import (
    UnreadableCheckpointError,
    read_checkpoint,
    read_state_dict,
    safe_torch_load,
)


def _damaged(tmp_path: Path) -> dict[str, Path]:
    """An empty file, a zip checkpoint cut in half, a legacy-format one cut short, and text that is no checkpoint."""
    good, legacy = tmp_path / "good.ckpt", tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"net.w": torch.ones(64)}}, good)
    torch.save({"state_dict": {"net.w": torch.ones(64)}}, legacy, _use_new_zipfile_serialization=False)
    files = {"empty": tmp_path / "empty.ckpt", "truncated": tmp_path / "truncated.ckpt",
             "truncated_legacy": tmp_path / "truncated_legacy.ckpt", "text": tmp_path / "text.ckpt"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["truncated_legacy"].write_bytes(legacy.read_bytes()[:20])
    files["text"].write_text("not a checkpoint")
    return files


@pytest.mark.parametrize("kind", ["empty", "truncated", "truncated_legacy", "text"])
def test_damaged_checkpoints_name_the_file_in_every_reader(tmp_path, kind):
    path = _damaged(tmp_path)[kind]
    readers = [safe_torch_load, read_checkpoint, read_state_dict, AtomicCheckpointIO().load_checkpoint,
               lambda p: safe_torch_load(p, mmap=True), lambda p: safe_torch_load(p, weights_only=False)]
    for read in readers:
        with pytest.raises(UnreadableCheckpointError) as info:
            read(path)
        message = str(info.value)
        assert str(path) in message and f"{path.stat().st_size} bytes" in message and "\n" not in message
    if kind == "empty":
        assert "it is empty" in message


def _sit() -> SiT:
    return SiT(model="SiT-S/4", input_size=16, in_channels=3, num_classes=4, depth=1, hidden_size=32, num_heads=2,
               sampling=dict(num_steps=2, sampler=EulerODE()))


@pytest.mark.parametrize("labels, shown", [([0, 5], "[5]"), ([-1, 2], "[-1]"), ([7, 9, 1], "[7, 9]")])
def test_sample_refuses_labels_outside_the_class_range_naming_them(labels, shown):
    with pytest.raises(LabelRangeError) as info:
        _sit().sample(torch.tensor(labels))
    assert str(info.value) == (f"SiT.sample(): label(s) {shown} outside [0, 4] (class ids 0..3; 4 = unconditional)")


def test_sample_takes_every_class_and_the_null_label_and_refuses_float_labels():
    assert _sit().sample(torch.arange(5)).shape == (5, 3, 16, 16)  # 4 = num_classes: unconditional
    with pytest.raises(TypeError, match=r"SiT.sample\(\): labels must be an integer tensor.*torch.float32"):
        _sit().sample(torch.tensor([0.0, 1.0]))
