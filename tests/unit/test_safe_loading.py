"""Safe loading (docs/fault-tolerance.md): a checkpoint with a code payload is refused, unexecuted, by every
loader of the library, by the CLI's resume and by Lightning's own resume; no loader in the code base unpickles
arbitrary objects."""
from __future__ import annotations

import ast
import os
import pickle
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from speedrun_diffusion.callbacks.checkpointing import AtomicCheckpointIO
from speedrun_diffusion.lightning_modules.weights import UnsafeCheckpointError, safe_torch_load
from tests.helpers import ROOT
from tests.helpers.toy_recipe import ToyRecipe, toy_loader

TINY = str(ROOT / "configs" / "sit" / "tiny_cpu.yaml")


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(params=["zip", "legacy"])
def evil(request, tmp_path) -> tuple[Path, Path]:
    """A Lightning-looking checkpoint whose hyper-parameters carry the payload (torch's zip or legacy format)."""
    marker = tmp_path / "pwned"
    content = {"state_dict": {"net.w": torch.ones(2)}, "ema": {"w": torch.ones(2)}, "global_step": 1,
               "hyper_parameters": {"lr": Payload(marker)}}
    path = tmp_path / "evil.ckpt"
    torch.save(content, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, marker


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speedrun-diffusion"])


def test_the_payload_is_real(evil):
    path, marker = evil
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.exists()


def test_safe_torch_load_and_checkpoint_io_refuse_by_file_name(evil):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match=rf"refused to load {path}.*system"):
        safe_torch_load(path)
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_official_importer_and_feature_weights_refuse(evil):
    from speedrun_diffusion.lightning_modules.checkpoints import load_official_checkpoint
    from speedrun_diffusion.lightning_modules.weights import read_state_dict

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        load_official_checkpoint(path, "srdit.sit")
    with pytest.raises(pickle.UnpicklingError):
        read_state_dict(path, "Inception weights")
    assert not marker.exists()


def test_sid2_weight_import_refuses(evil, tmp_path):
    from speedrun_diffusion.lightning_modules.sid2 import SiD2

    path, marker = evil
    model = SiD2(preset=None, resolution=16, num_classes=4, patch_size=2, channels=[16, 32],
                 block_types=["resblock", "transformer"], num_updown_blocks=[1], num_mid_blocks=1,
                 block_dropout=[0.0, 0.0], head_dim=16)
    with pytest.raises(pickle.UnpicklingError):
        model.load_net_weights(path)  # EMA import from a Lightning checkpoint
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        model.load_net_weights(tmp_path / "missing.ckpt")
    assert not marker.exists()


def test_cli_resume_refuses_by_file_name(evil, tmp_path, monkeypatch):
    from speedrun_diffusion.lightning_modules.cli import build_cli

    path, marker = evil
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        build_cli(["fit", "--config", TINY, "--trainer.max_steps", "1", "--ckpt_path", str(path)])
    assert not marker.exists()


def test_lightning_own_resume_refuses(evil, tmp_path):
    # Lightning 2.6 passes weights_only=None to torch.load, which torch >= 2.6 treats as True
    path, marker = evil
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        trainer.fit(ToyRecipe(), train_dataloaders=toy_loader(), ckpt_path=path)
    assert not marker.exists()


def _calls(tree: ast.AST, owner: str, name: str):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name
                and isinstance(node.func.value, ast.Name) and node.func.value.id == owner):
            yield node


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_loader_in_the_code_base_unpickles_arbitrary_objects():
    """Weight files are read in one place, ``lightning_modules/weights.py`` (its one ``torch.load`` without
    ``weights_only=True`` is the caller-requested ``weights_only=False`` branch); nothing unpickles elsewhere."""
    files = [p for d in ("lightning_modules", "callbacks", "datamodules", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    home = ROOT / "lightning_modules" / "weights.py"
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        for call in _calls(tree, "torch", "load"):
            value = _keyword(call, "weights_only")
            if path != home:
                offenders.append(f"{where}:{call.lineno} torch.load outside weights.py")
            elif not isinstance(value, ast.Constant):
                offenders.append(f"{where}:{call.lineno} torch.load with a computed weights_only")
        offenders += [f"{where}:{node.lineno} safetensors load_file outside weights.py" for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and node.module == "safetensors.torch" and path != home
                      and any(a.name == "load_file" for a in node.names)]
        for name in ("load", "loads", "Unpickler"):
            offenders += [f"{where}:{c.lineno} pickle.{name}" for c in _calls(tree, "pickle", name)]
        for call in _calls(tree, "np", "load"):
            value = _keyword(call, "allow_pickle")
            if isinstance(value, ast.Constant) and value.value is True:
                offenders.append(f"{where}:{call.lineno} np.load(allow_pickle=True)")
    assert not offenders, offenders
