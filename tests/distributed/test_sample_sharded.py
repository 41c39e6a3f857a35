"""``speedrun-diffusion sample`` sharded over two gloo ranks (torchrun) writes the same ADM batch as one process: each
batch's noise comes from its own seed, whichever rank draws it."""
from __future__ import annotations

import subprocess
import sys

import lightning as L
import numpy as np

from speedrun_diffusion.callbacks import EMA
from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules import SiT
from tests.helpers import ROOT


def test_two_ranks_write_the_batch_of_one(tmp_path):
    model = SiT(model="SiT-S/4", input_size=16, num_classes=4, depth=1, hidden_size=32, num_heads=2)
    data = SyntheticDataModule(resolution=16, num_classes=4, train_size=8, val_size=4, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[EMA(decay=0.5)])
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "sit.ckpt")
    common = ["-m", "speedrun_diffusion.lightning_modules.cli", "sample", "--ckpt_path", str(tmp_path / "sit.ckpt"),
              "--num_samples", "10", "--batch_size", "3", "--num_steps", "2", "--grid_samples", "0"]
    for name, launcher in (("one", [sys.executable]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                    "--master_port", "29531"])):
        cmd = [*launcher, *common, "--output_dir", str(tmp_path / name)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = (np.load(tmp_path / name / "samples.npz") for name in ("one", "two"))
    np.testing.assert_array_equal(one["arr_0"], two["arr_0"])
    np.testing.assert_array_equal(one["arr_1"], two["arr_1"])
    assert one["arr_0"].shape == (10, 16, 16, 3)
