"""`LatentWriter` + `LatentEncoder` in a real ``predict`` run: shards hold exactly the tokenizer's latents (mean,
or a reproducible posterior sample), the labels, dataset indices and the uint8 images; the manifest describes them."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from speedrun_diffusion.callbacks import LatentWriter
from speedrun_diffusion.datamodules import SplitForPredict, SyntheticDataModule
from speedrun_diffusion.lightning_modules import LatentEncoder
from speedrun_diffusion.lightning_modules.networks.invae import INVAE, INVAEConfig

RES, N = 16, 12


def tiny_vae() -> INVAE:
    torch.manual_seed(0)
    return INVAE(INVAEConfig(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                             resolution=RES, scaling_factor=0.5))


def source() -> SyntheticDataModule:
    return SyntheticDataModule(resolution=RES, num_classes=3, train_size=N, val_size=4, batch_size=4)


def write_cache(root: Path, mode: str = "mean", shard_size: int = 5, target_encoder=None, **writer) -> Path:
    """Run ``predict`` over the tiny synthetic train split with a tiny INVAE; returns the cache directory."""
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[LatentWriter(str(root), shard_size=shard_size, **writer)])
    module = LatentEncoder(tiny_vae(), mode=mode, target_encoder=target_encoder, seed=3)
    trainer.predict(module, datamodule=SplitForPredict(source(), "train", batch_size=4), return_predictions=False)
    return root


def read_all(root: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((root / "manifest.json").read_text())
    shards = [load_file(str(root / s["file"])) for s in manifest["shards"]]
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


def test_mean_latents_labels_images_and_manifest(tmp_path):
    root = write_cache(tmp_path / "cache")
    manifest = json.loads((root / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [5, 5, 2]
    assert manifest["latent_shape"] == [4, RES // 2, RES // 2] and manifest["latent_dtype"] == "float32"
    assert (manifest["tokenizer"], manifest["scale"], manifest["mode"]) == ("INVAE", 0.5, "mean")
    assert manifest["num_classes"] == 3 and manifest["num_samples"] == N
    assert set(manifest["keys"]) == {"latent", "label", "index", "image"}
    stored = read_all(root)
    data = source().train_set
    images = torch.stack([data[i]["image"] for i in range(N)])
    assert torch.equal(stored["index"], torch.arange(N))
    assert torch.equal(stored["label"], torch.tensor([data.label(i) for i in range(N)]))
    assert torch.equal(stored["image"].float() / 127.5 - 1, images)  # uint8 round trip is exact
    with torch.no_grad():
        torch.testing.assert_close(stored["latent"], tiny_vae().posterior(images).mean)
    assert not list(root.glob("manifest.rank*.json"))


def test_sample_mode_is_reproducible_and_bf16_storage(tmp_path):
    a = read_all(write_cache(tmp_path / "a", mode="sample", dtype="bfloat16", save_images=False))
    b = read_all(write_cache(tmp_path / "b", mode="sample", dtype="bfloat16", save_images=False))
    mean = read_all(write_cache(tmp_path / "m", mode="mean", save_images=False))
    assert a["latent"].dtype == torch.bfloat16 and "image" not in a
    assert torch.equal(a["latent"], b["latent"])  # seeded posterior noise
    assert (a["latent"].float() - mean["latent"]).abs().mean() > 0.1  # a sample, not the mean


def test_existing_cache_needs_overwrite(tmp_path):
    root = write_cache(tmp_path / "cache", shard_size=100)
    with pytest.raises(FileExistsError, match="manifest.json"):
        write_cache(root)
    write_cache(root, shard_size=4, overwrite=True)
    assert len(list(root.glob("shard-*.safetensors"))) == 3  # old single shard removed


def test_writer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        LatentWriter("x", dtype="int8")
    with pytest.raises(ValueError, match="shard_size"):
        LatentWriter("x", shard_size=0)
