"""`DINOv2Targets` (SR-DiT REPA / REG targets): the official preprocessing (x/255, ImageNet normalisation, bicubic
resize) and position-embedding resampling (timm ``resample_abs_pos_embed`` to the latent grid, REPA's rule)
on a tiny DINOv2-architecture ViT loaded from a local file; a missing file fails naming it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from speedrun_diffusion.lightning_modules.networks.target_encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DINOv2Targets,
    timm_dinov2_tokens,
)

TINY = {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}


def test_local_weights_resampled_pos_embed_and_official_preprocessing(tmp_path):
    torch.manual_seed(0)
    native = timm_dinov2_tokens(random_weights=True, resolution=64, model_kwargs=TINY).eval()  # 16×16 grid
    path = tmp_path / "dinov2_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, str(path))

    targets = DINOv2Targets(weights=str(path), resolution=32, model_kwargs=TINY)  # latent grid 8×8
    expected_pos = resample_abs_pos_embed(native.pos_embed.detach(), [8, 8], num_prefix_tokens=1)
    torch.testing.assert_close(targets.encoder.pos_embed, expected_pos)

    uint8 = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    images = uint8.float() / 127.5 - 1  # the datamodule contract
    x = (uint8.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = F.interpolate(x, size=(32, 32), mode="bicubic")
    native.pos_embed.data = expected_pos
    native.patch_embed.img_size, native.patch_embed.grid_size = (32, 32), (8, 8)
    with torch.no_grad():
        want = native.forward_features(x)
    tokens = targets(images)
    assert tokens.shape == (2, 1 + 64, 16)
    torch.testing.assert_close(tokens, want, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in targets.parameters()) and not targets.encoder.training


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DINOv2Targets(weights=str(tmp_path / "nope.pth"), resolution=32, model_kwargs=TINY)


def test_real_architecture_on_meta_device():
    with torch.device("meta"):
        targets = DINOv2Targets(random_weights=True, resolution=224)
    assert targets.encoder.pos_embed.shape == (1, 1 + 16 * 16, 768) and targets.embed_dim == 768
    with torch.device("meta"):
        assert DINOv2Targets(random_weights=True, resolution=448).encoder.pos_embed.shape[1] == 1 + 32 * 32
