"""Serving a trained recipe (``serving.py``): every recipe comes back from a training checkpoint with its EMA weights,
ready to sample, and from a bundle written by ``save_pretrained``; the samples equal those of the EMA-swapped
training module for the same noise. Sharded checkpoint folders are read whole; files naming other classes are
refused."""
from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch import nn

from speedrun_diffusion.callbacks import EMA
from speedrun_diffusion.datamodules import SyntheticDataModule
from speedrun_diffusion.lightning_modules import RAEStage2, SiD2, SiT, SpeedDiff, SRDiT
from speedrun_diffusion.lightning_modules.checkpoints.rae_stage1 import build_rae
from speedrun_diffusion.lightning_modules.losses import LPIPS, ConvFeatures
from speedrun_diffusion.lightning_modules.networks import INVAE
from speedrun_diffusion.lightning_modules.networks.discriminators import PatchGANDiscriminator
from speedrun_diffusion.lightning_modules.networks.invae import INVAEConfig
from speedrun_diffusion.lightning_modules.serving import load_pretrained, save_pretrained
from speedrun_diffusion.lightning_modules.weights import CheckpointMismatchError

RES, CLASSES = 16, 4


class Targets(nn.Module):
    """REPA / REG targets for SR-DiT: [mean token; 4×4 patch tokens] of width 8 from 16² images."""

    embed_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(images).flatten(2).transpose(1, 2)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)


def tiny_invae() -> INVAE:
    return INVAE(INVAEConfig(embed_dim=4, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                             resolution=RES, scaling_factor=1.0))


def tiny_rae():
    return build_rae("dinov2", "B", encoder_input_size=RES, decoder_patch_size=4,
                     encoder_overrides=dict(hidden_size=16, depth=1, num_heads=2, mlp_dim=32, patch_size=4,
                                            pos_grid=4),
                     decoder_overrides=dict(hidden_size=32, depth=1, num_heads=2, mlp_dim=64))


RECIPES = {
    "sit": lambda: SiT(model="SiT-S/4", input_size=RES, num_classes=CLASSES, depth=1, hidden_size=32, num_heads=2,
                       sampling={"num_steps": 3}),
    "sid2": lambda: SiD2(preset=None, resolution=RES, num_classes=CLASSES, patch_size=2, channels=[16, 32],
                         block_types=["resblock", "transformer"], num_updown_blocks=[1], num_mid_blocks=1,
                         block_dropout=[0.0, 0.0], head_dim=16, sampling={"num_steps": 3}),
    "srdit": lambda: SRDiT(model="SiT-S/1", input_size=4, in_channels=4, num_classes=CLASSES, depth=5, hidden_size=32,
                           num_heads=2, z_dim=8, projector_dim=16, shift_base=16, tokenizer=tiny_invae(),
                           target_encoder=Targets(), latent_mode="mean", sampling={"num_steps": 3}),
    "rae_stage2": lambda: RAEStage2(model="DiTDH-S", depth=1, hidden_size=32, num_heads=2, head_depth=1,
                                    head_hidden_size=32, head_num_heads=2, input_size=4, in_channels=16,
                                    num_classes=CLASSES, shift_base=64, tokenizer=tiny_rae(), official_rae=False,
                                    sampling={"num_steps": 3}, optimizer={"schedule": "constant"}),
    "speeddiff": lambda: SpeedDiff(vae="B", resolution=RES, depth=1, hidden_size=32, num_heads=2, num_classes=CLASSES,
                                   vae_overrides=dict(patch_size=4, hidden_size=32, encoder_depth=1, decoder_depth=1,
                                                      num_heads=2, latent_channels=4, swiglu_multiple_of=16),
                                   lpips=LPIPS(ConvFeatures((8, 16)), pretrained=False),
                                   discriminator=PatchGANDiscriminator(base_channels=8, num_layers=2),
                                   sampling={"num_steps": 3}),
}


def trained(name: str, tmp_path) -> tuple[L.LightningModule, EMA, str]:
    """The tiny recipe after 3 steps with an EMA of decay 0.5 (the shadow differs from the raw weights)."""
    torch.manual_seed(0)
    module, ema = RECIPES[name](), EMA(decay=0.5)
    data = SyntheticDataModule(resolution=RES, num_classes=CLASSES, train_size=12, val_size=4, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, limit_val_batches=0,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[ema])
    trainer.fit(module, datamodule=data)
    path = str(tmp_path / f"{name}.ckpt")
    trainer.save_checkpoint(path)
    return module, ema, path


def samples(module, seed: int = 1) -> torch.Tensor:
    return module.sample(torch.tensor([0, 3]), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_checkpoint_and_bundle_sample_like_the_ema_module(name, tmp_path):
    module, ema, path = trained(name, tmp_path)
    with ema.swapped(module):
        expected = samples(module)
        ema_weights = {k: v.clone() for k, v in module.net.state_dict().items()}
    extra = {}
    if name == "rae_stage2":  # its frozen tokenizer is not in its checkpoints: without one, a clear refusal
        with pytest.raises(CheckpointMismatchError, match="holds none of its weights.*pass tokenizer="):
            load_pretrained(path)
        extra = {"tokenizer": tiny_rae()}
    served = load_pretrained(path, **extra)
    assert not served.training and served.uses_ema and served.trained_steps == 3
    for key, value in ema_weights.items():
        if key in served.net.state_dict():
            torch.testing.assert_close(served.net.state_dict()[key], value, rtol=0, atol=0, msg=key)
    if name == "rae_stage2":  # the injected tokenizer has other random weights: give it the trained one
        served.tokenizer.load_state_dict(module.tokenizer.state_dict())
    torch.testing.assert_close(samples(served), expected, rtol=1e-5, atol=1e-5)
    raw = load_pretrained(path, use_ema=False, **extra)
    assert not raw.uses_ema and any(not torch.equal(raw.net.state_dict()[k], v) for k, v in ema_weights.items())

    bundle = save_pretrained(served, tmp_path / "bundle")
    record = json.loads((bundle / "recipe.json").read_text())
    assert record["recipe"] == type(module).recipe_name() and record["ema"] is True
    torch.testing.assert_close(samples(load_pretrained(bundle)), expected, rtol=1e-5, atol=1e-5)


def test_a_sharded_checkpoint_folder_is_read_whole(tmp_path):
    import torch.distributed.checkpoint as dcp

    module, ema, path = trained("sit", tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    folder = tmp_path / "sharded.ckpt"  # the layout of ModelParallelStrategy: DCP shards + meta.pt
    dcp.save({"state_dict": checkpoint.pop("state_dict"),
              **{f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states"))}}, checkpoint_id=folder)
    torch.save(checkpoint, folder / "meta.pt")
    with ema.swapped(module):
        torch.testing.assert_close(samples(load_pretrained(folder)), samples(module), rtol=1e-5, atol=1e-5)


def test_refusals_name_the_file(tmp_path):
    _, _, path = trained("sit", tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["recipe"] = "speedrun_diffusion.lightning_modules.cli.build_cli"  # not a recipe: never called
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="foreign.ckpt names .*build_cli, which is not a speedrun_diffusion recipe"):
        load_pretrained(tmp_path / "foreign.ckpt")
    checkpoint["recipe"] = "os.system"
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a recipe of speedrun_diffusion"):
        load_pretrained(tmp_path / "foreign.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if "blocks.0.attn" not in k}
    checkpoint.pop("callbacks")
    torch.save(checkpoint, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointMismatchError, match="partial.ckpt does not fit DiT: missing keys"):
        load_pretrained(tmp_path / "partial.ckpt", use_ema=False)


def test_the_ema_callback_writes_a_bundle_with_the_ema_weights(tmp_path):
    torch.manual_seed(0)
    module, ema = RECIPES["sit"](), EMA(decay=0.5, bundle_path=str(tmp_path / "bundle"))
    data = SyntheticDataModule(resolution=RES, num_classes=CLASSES, train_size=12, val_size=4, batch_size=4)
    L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, limit_val_batches=0,
              enable_model_summary=False, enable_checkpointing=False, callbacks=[ema]).fit(module, datamodule=data)
    served = load_pretrained(tmp_path / "bundle")
    assert served.uses_ema and served.trained_steps == 3
    with ema.swapped(module):
        torch.testing.assert_close(samples(served), samples(module), rtol=1e-5, atol=1e-5)
