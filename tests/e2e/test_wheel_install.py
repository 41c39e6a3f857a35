"""The built wheel, installed in a fresh virtualenv beside a user's project that has its own ``callbacks.py``,
``datamodules/`` and ``lightning_modules.py``: the library imports from its namespace, ships its configs, and trains a
tiny recipe from Python and from the console script (a shipped config found by name). The virtualenv reaches the
test environment's torch through a ``.pth`` line, which does not run that environment's editable-install hook, so the
repository itself is never on the path."""
from __future__ import annotations

import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.helpers import ROOT

USER_TRAINS = """
import callbacks, datamodules, lightning_modules                      # the user's own modules
import lightning as L
import torch
import speedrun_diffusion.lightning_modules as library
from speedrun_diffusion.callbacks import EMA
from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules import SiT

assert (callbacks.OWNER, datamodules.OWNER, lightning_modules.OWNER) == ("user", "user", "user")
print("library at", library.__file__)
model = SiT(model="SiT-S/4", input_size=16, num_classes=4, depth=1, hidden_size=32, num_heads=2,
            sampling={"num_steps": 2})
data = SyntheticDataModule(resolution=16, num_classes=4, train_size=16, val_size=4, batch_size=4)
trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    callbacks=[EMA(decay=0.9)], limit_val_batches=0)
trainer.fit(model, datamodule=data)
print("trained", trainer.global_step, tuple(model.sample(torch.arange(2)).shape))
"""


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the virtualenv's bin folder, the user's project folder) with the freshly built wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # build from a copy: the build must not write into the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("lightning_modules", "callbacks", "datamodules", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(source)], tmp)
    wheel = next(dist.glob("speedrun_diffusion-*.whl"))
    env = tmp / "venv"
    venv.create(env, with_pip=True)
    purelib = next(env.glob("lib/python*/site-packages"))
    # the test environment's package folders (its own and any it reaches through .pth lines), not the repository
    paths = [p for p in sys.path if p.endswith("site-packages")] or site.getsitepackages()
    (purelib / "test_environment.pth").write_text("\n".join(paths) + "\n")
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
          str(wheel)], tmp)
    user = tmp / "user_project"
    (user / "datamodules").mkdir(parents=True)
    for module in (user / "callbacks.py", user / "lightning_modules.py", user / "datamodules" / "__init__.py"):
        module.write_text('OWNER = "user"\n')
    return env / "bin", user


def test_the_wheel_holds_the_package_and_its_configs(installed):
    bin_dir, user = installed
    out = _run([str(bin_dir / "python"), "-c", (
        "import importlib.resources as r, speedrun_diffusion.lightning_modules as m; print(m.__file__); "
        "print(sorted(p.name for p in r.files('speedrun_diffusion.configs').joinpath('sid2').iterdir()))")], user)
    assert str(bin_dir.parent) in out and str(ROOT) not in out  # the installed copy, not the repository
    assert "tiny_cpu.yaml" in out and "small_512.yaml" in out


def test_a_user_project_with_its_own_callbacks_trains_from_python(installed):
    bin_dir, user = installed
    out = _run([str(bin_dir / "python"), "-c", USER_TRAINS], user)
    assert f"library at {bin_dir.parent}" in out and "trained 2 (2, 3, 16, 16)" in out


def test_a_user_project_with_its_own_callbacks_trains_from_the_cli(installed):
    bin_dir, user = installed
    _run([str(bin_dir / "speedrun-diffusion"), "fit", "--config", "sit/tiny_cpu", "--trainer.max_steps", "2",
          "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
          "--data.init_args.train_size", "16", "--data.init_args.batch_size", "4", "--data.init_args.resolution", "16",
          "--model.init_args.depth", "1", "--model.init_args.hidden_size", "32", "--model.init_args.num_heads", "2"],
         user)
    assert (user / "runs" / "sit_tiny_cpu" / "checkpoints" / "last.ckpt").is_file()
