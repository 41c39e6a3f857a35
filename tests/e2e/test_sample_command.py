"""``speedrun-diffusion sample`` on a checkpoint the CLI trained: the ADM batch (uint8 NHWC, balanced labels) and the
grid; the images equal the recipe's ``sample()`` for the same seeds; an interrupted run resumes at the missing
batches only; other arguments in the same folder are refused; a bundle samples the same images."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from speedrun_diffusion.lightning_modules.cli import build_cli
from speedrun_diffusion.lightning_modules.sample_command import run
from speedrun_diffusion.lightning_modules.serving import load_pretrained
from tests.helpers import CONFIGS

TINY = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--data.init_args.train_size", "8", "--data.init_args.batch_size", "4", "--data.init_args.resolution", "16",
        "--model.init_args.depth", "1", "--model.init_args.hidden_size", "32", "--model.init_args.num_heads", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("sit")
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = ["speedrun-diffusion"]
    os.chdir(root)  # the config's relative run folder lands here
    try:
        build_cli(["fit", "-c", str(CONFIGS / "sit" / "tiny_cpu.yaml"), *TINY], run=True)
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return str(next(root.rglob("last.ckpt")))


def test_samples_grid_labels_and_equality_with_sample(checkpoint, tmp_path):
    out = run(["--ckpt_path", checkpoint, "--output_dir", str(tmp_path / "s"), "--num_samples", "10",
               "--batch_size", "4", "--num_steps", "3", "--seed", "7"])
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (10, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [i % 10 for i in range(10)]  # balanced over the 10 synthetic classes
    assert (out / "grid.png").is_file()
    model = load_pretrained(checkpoint)  # batch 1 (images 4…7) from its own seed (7, 1)
    images = model.sample(torch.arange(4, 8), num_steps=3, generator=torch.Generator().manual_seed(7 * 1_000_003 + 1))
    expected = torch.clamp((images.float() + 1) / 2 * 255, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(data["arr_0"][4:8], expected)


def test_an_interrupted_run_resumes_at_the_missing_batches(checkpoint, tmp_path):
    argv = ["--ckpt_path", checkpoint, "--output_dir", str(tmp_path / "s"), "--num_samples", "10", "--batch_size", "4",
            "--num_steps", "3", "--classes", "1,2"]
    out = run(argv)
    first = np.load(out / "samples.npz")["arr_0"]
    assert np.load(out / "samples.npz")["arr_1"].tolist() == [1, 2] * 5
    kept = (out / "chunks" / "000000.npz").stat().st_mtime_ns
    (out / "chunks" / "000001.npz").unlink()  # the batch a kill interrupted
    (out / "samples.npz").unlink()
    run(argv)
    np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], first)
    assert (out / "chunks" / "000000.npz").stat().st_mtime_ns == kept  # not sampled again
    with pytest.raises(SystemExit, match="holds samples made with other arguments"):
        run([*argv[:-2], "--classes", "3"])


def test_a_bundle_samples_the_same_images(checkpoint, tmp_path):
    common = ["--output_dir", str(tmp_path / "a"), "--num_samples", "4", "--batch_size", "4", "--num_steps", "2",
              "--guidance_scale", "2.0", "--sampler", "Heun"]
    a = run(["--ckpt_path", checkpoint, *common, "--save_bundle", str(tmp_path / "bundle")])
    b = run(["--ckpt_path", str(tmp_path / "bundle"), *[tmp_path.joinpath("b").as_posix() if x == str(tmp_path / "a")
                                                          else x for x in common]])
    np.testing.assert_array_equal(np.load(a / "samples.npz")["arr_0"], np.load(b / "samples.npz")["arr_0"])


def test_compile_samples_the_eager_images_with_the_compiled_denoiser(checkpoint, tmp_path, monkeypatch):
    from speedrun_diffusion.lightning_modules import sample_command
    from speedrun_diffusion.lightning_modules.compilation import compile_modules, is_compiled

    compiled = []

    def spy(modules, cfg):
        modules = list(modules)
        compile_modules(modules, cfg)
        compiled.extend(modules)

    monkeypatch.setattr(sample_command, "compile_modules", spy)
    common = ["--ckpt_path", checkpoint, "--num_samples", "4", "--batch_size", "4", "--num_steps", "3",
              "--guidance_scale", "2.0"]
    torch._dynamo.utils.counters.clear()
    eager = np.load(run([*common, "--output_dir", str(tmp_path / "eager")]) / "samples.npz")["arr_0"]
    assert compiled == [] and not torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.utils.counters.clear()
    fast = np.load(run([*common, "--output_dir", str(tmp_path / "compiled"), "--compile"]) / "samples.npz")["arr_0"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the sampler called the compiled forward
    assert compiled and all(is_compiled(m) for m in compiled) and type(compiled[0]).__name__ == "DiT"  # the denoiser
    diff = np.abs(eager.astype(int) - fast.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float rounding only: a uint8 level in a few pixels
