"""Feature extractors: documented names, shapes and layout with injected small networks; the real
torch-fidelity architecture (random weights) through the local-path loader; DINOv2 through timm with
the hub's position-embedding rule; clear errors for bad images and missing weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from speedrun_diffusion.callbacks.features import (
    DINOv2Features,
    InceptionFeatures,
    hub_interpolate_pos_embed,
    spatial_features,
)
from speedrun_diffusion.callbacks.features.dinov2 import pil_bicubic_resize, timm_dinov2
from speedrun_diffusion.callbacks.features.inception import torch_fidelity_inception
from tests.conftest import load_case, reference_cases
from tests.helpers.eval_toy import TinyInception, tiny_dinov2, tiny_inception

IMAGES = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_injected_inception_gives_named_features_and_hooked_nhwc_spatial():
    extractor = tiny_inception()
    out = extractor(IMAGES)
    assert set(out) == {"pool_3", "logits_unbiased", "spatial"}
    assert {k: v.shape[1] for k, v in out.items()} == extractor.feature_dims
    assert all(v.dtype == torch.float32 and v.shape[0] == 3 for v in out.values())
    net = extractor.network
    x = F.interpolate((IMAGES.float() - 128) / 128, size=(4, 4), mode="bilinear", align_corners=False)
    conv = net.Mixed_6d.branch1x1(x)
    assert torch.equal(out["spatial"], conv.permute(0, 2, 3, 1)[..., :7].reshape(3, -1))


@pytest.mark.parametrize("path", reference_cases("metrics", "sfid_layout"), ids=lambda p: p.stem)
def test_hook_on_a_17x17_layer_gives_the_adm_2023_layout(path):
    _, t = load_case(path)
    conv = t["input/mixed_6_conv_nchw"].float()

    class Fixed(TinyInception):
        def forward(self, x):
            self.Mixed_6d.branch1x1(x)  # the hooked layer: here it emits the recorded 17x17 map
            return torch.zeros(len(x), 16), torch.zeros(len(x), 10)

    class Recorded(torch.nn.Module):
        def forward(self, x):
            return conv

    net = Fixed()
    net.Mixed_6d.branch1x1 = Recorded()
    extractor = InceptionFeatures(network=net, feature_dims={"pool_3": 16, "logits_unbiased": 10, "spatial": 2023})
    out = extractor(torch.zeros(len(conv), 3, 17, 17, dtype=torch.uint8))
    assert out["spatial"].shape == (len(conv), 2023)
    assert torch.equal(out["spatial"], t["output/spatial_features"].float())
    assert torch.equal(spatial_features(conv), out["spatial"])


def test_real_inception_architecture_loads_from_a_local_file(tmp_path):
    random = torch_fidelity_inception(random_weights=True)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in random.state_dict().items()}, str(path))
    extractor = InceptionFeatures(weights=path)
    assert torch.equal(extractor.network.fc.weight, random.fc.weight)  # the file's weights, not a download
    out = extractor(IMAGES[:1])
    assert {k: tuple(v.shape) for k, v in out.items()} == {"pool_3": (1, 2048), "logits_unbiased": (1, 1008),
                                                          "spatial": (1, 2023)}
    torch.testing.assert_close(out["logits_unbiased"], out["pool_3"] @ random.fc.weight.T)  # no bias (ADM's IS input)


def test_dinov2_through_timm_from_a_local_file_uses_the_hub_position_rule(tmp_path):
    import timm

    small = dict(depth=1, embed_dim=32, num_heads=2)
    source = timm.create_model("vit_large_patch14_dinov2.lvd142m", pretrained=False, num_classes=0, **small)
    path = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    net = timm_dinov2(weights=path, **small)
    assert torch.equal(net.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert net.pos_embed.shape == (1, 1 + 16 * 16, 32)
    # hub rule: bicubic, no antialias, scale (16 + 0.1) / 37 on the 37x37 grid; the CLS position kept
    grid = source.pos_embed[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", antialias=False)
    torch.testing.assert_close(net.pos_embed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 256, 32))
    assert torch.equal(net.pos_embed[:, :1], source.pos_embed[:, :1])
    assert torch.equal(hub_interpolate_pos_embed(source.pos_embed, 37), source.pos_embed)
    out = DINOv2Features(network=net)(IMAGES)
    assert out["dinov2"].shape == (3, 32)


def test_dinov2_preprocessing_is_pil_bicubic_then_imagenet_normalisation():
    extractor = tiny_dinov2()
    x = extractor.preprocess(IMAGES)
    resized = pil_bicubic_resize(IMAGES, 16)
    assert resized.dtype == torch.uint8 and resized.shape == (3, 3, 16, 16)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (resized.float() / 255 - mean) / std)
    assert extractor(IMAGES)["dinov2"].shape == (3, 12)


def test_clear_errors_for_bad_images_and_missing_weights(tmp_path):
    extractor = tiny_inception()
    with pytest.raises(TypeError, match="uint8"):
        extractor(IMAGES.float())
    with pytest.raises(ValueError, match="NCHW with 3 channels"):
        extractor(IMAGES[:, :1])
    missing = tmp_path / "weights-inception.pth"
    with pytest.raises(FileNotFoundError, match="weights-inception.pth"):
        InceptionFeatures(weights=missing)
    with pytest.raises(FileNotFoundError, match="dinov2.pth"):
        DINOv2Features(weights=tmp_path / "dinov2.pth")
