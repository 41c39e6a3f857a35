"""`LatentDataModule` reads back what `LatentWriter` wrote (latents, labels, images, targets); bad caches fail
naming the file; SR-DiT losses on cached latents equal those on the same images encoded on the fly."""
from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors.torch import load_file, save_file

from speedrun_diffusion.datamodules import LatentDataModule, LatentDataset
from speedrun_diffusion.lightning_modules.srdit import SRDiT
from tests.unit.callbacks.test_latent_writer import RES, N, read_all, source, tiny_vae, write_cache
from tests.unit.recipes.test_srdit import PatchTokens


def targets() -> PatchTokens:
    torch.manual_seed(7)
    return PatchTokens(dim=8, patch=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("latents"), target_encoder=targets())


def _copy(cache, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for f in cache.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


def test_items_and_batches_round_trip(cache):
    stored = read_all(cache)
    data = LatentDataset(cache, with_images=True, with_targets=True)
    assert len(data) == N and data.latent_shape == (4, RES // 2, RES // 2)
    for i in (0, 6, N - 1):  # first, middle and last shard
        item = data[i]
        assert torch.equal(item["latent"], stored["latent"][i]) and item["label"] == stored["label"][i]
        assert torch.equal(item["image"], source().train_set[i]["image"])
        assert torch.equal(item["repa_target"], stored["repa_target"][i])
    dm = LatentDataModule(str(cache), batch_size=4, val_size=4, with_targets=True)
    assert dm.num_classes == 3 and dm.latent_scale == 0.5
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"latent", "label", "image", "repa_target"} and batch["latent"].shape == (4, 4, 8, 8)
    assert len(dm.val_dataloader().dataset) == 4
    no_images = next(iter(LatentDataModule(str(cache), batch_size=2, with_images=False).train_dataloader()))
    assert set(no_images) == {"latent", "label"}


def test_missing_manifest_and_shard(cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        LatentDataModule(str(tmp_path))
    broken = _copy(cache, tmp_path)
    shard = json.loads((broken / "manifest.json").read_text())["shards"][1]["file"]
    (broken / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        LatentDataset(broken)


@pytest.mark.parametrize("change", ["shape", "dtype"])
def test_shard_with_wrong_latent_is_named(cache, tmp_path, change):
    broken = _copy(cache, tmp_path)
    shard = json.loads((broken / "manifest.json").read_text())["shards"][0]["file"]
    tensors = load_file(str(broken / shard))
    tensors["latent"] = (tensors["latent"][:, :2] if change == "shape" else tensors["latent"].half()).contiguous()
    save_file(tensors, str(broken / shard))
    with pytest.raises(ValueError, match=f"{shard}.*'latent'"):
        LatentDataset(broken)


def test_label_out_of_range_and_missing_targets(cache, tmp_path):
    with pytest.raises(ValueError, match="label 2 outside \\[0, 2\\)"):
        LatentDataset(cache, num_classes=2)
    no_targets = write_cache(tmp_path / "plain", save_images=False)
    with pytest.raises(ValueError, match="no 'repa_target'"):
        LatentDataset(no_targets, with_targets=True)
    with pytest.raises(ValueError, match="no 'image'"):
        LatentDataset(no_targets, with_images=True)


def _srdit(**kw) -> SRDiT:
    torch.manual_seed(0)
    args = dict(model="SiT-S/1", input_size=8, in_channels=4, num_classes=3, depth=5, hidden_size=32, num_heads=2,
                z_dim=8, projector_dim=16, shift_base=128, sampling=dict(num_steps=2), tokenizer=tiny_vae(),
                target_encoder=targets(), latent_scale=0.5, latent_mode="mean", optimizer=dict(lr=1e-3))
    return SRDiT(**{**args, **kw})


def test_srdit_losses_equal_on_cached_latents_and_on_the_fly(cache):
    module = _srdit()
    cached = next(iter(LatentDataModule(str(cache), batch_size=4, with_targets=True).val_dataloader()))
    images = {"image": cached["image"], "label": cached["label"]}
    on_the_fly = module.compute_losses(images, generator=torch.Generator().manual_seed(1))
    from_cache = module.compute_losses({k: cached[k] for k in ("latent", "label", "image")},
                                       generator=torch.Generator().manual_seed(1))
    precomputed = module.compute_losses({k: cached[k] for k in ("latent", "label", "repa_target")},
                                        generator=torch.Generator().manual_seed(1))
    for name, value in on_the_fly.items():
        torch.testing.assert_close(from_cache[name], value, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(precomputed[name], value, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch\\['image'\\]"):
        module.compute_losses({"latent": cached["latent"], "label": cached["label"]})
    with pytest.raises(ValueError, match="batch\\['latent'\\] has shape"):
        module.compute_losses({**cached, "latent": cached["latent"][:, :2]})


def test_fit_on_cached_latents_checks_the_scale(cache, tmp_path):
    trainer_args = dict(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=str(tmp_path))
    dm = LatentDataModule(str(cache), batch_size=4)
    L.Trainer(**trainer_args).fit(_srdit(), datamodule=dm)
    with pytest.raises(ValueError, match="scale 0.5"):
        L.Trainer(**trainer_args).fit(_srdit(latent_scale=0.3099), datamodule=dm)
