"""Discriminators: SpeedDiff PatchGAN (shapes, spectral norm everywhere, no BatchNorm, unit spectral norm
after power iterations) and the RAE DINO discriminator (hidden frozen backbone, heads, checkpoint loading)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from speedrun_diffusion.lightning_modules.checkpoints import OfficialCheckpointError, import_official
from speedrun_diffusion.lightning_modules.networks.discriminators import (
    BatchNormLocal,
    DinoDiscriminator,
    DinoViT,
    PatchGANDiscriminator,
    load_dino_backbone,
)
from speedrun_diffusion.lightning_modules.weights import CheckpointMismatchError

TINY_RECIPE = dict(depth=4, key_depths=(1, 2), norm_eps=1e-6, patch_size=8, in_chans=3, embed_dim=16, num_heads=2,
                   mlp_ratio=2.0)


def spectral_convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


@pytest.mark.parametrize(("size", "layers", "out"), [(64, 3, 6), (32, 2, 6), (32, 1, 14)])
def test_patchgan_shapes(size: int, layers: int, out: int) -> None:
    d = PatchGANDiscriminator(in_channels=3, base_channels=8, num_layers=layers)
    x = torch.randn(2, 3, size, size)
    assert d(x).shape == (2, 1, out, out)


def test_patchgan_spectral_norm_no_batchnorm() -> None:
    d = PatchGANDiscriminator(base_channels=8, num_layers=3)
    convs = spectral_convs(d)
    assert len(convs) == 5
    for conv in convs:
        assert nn.utils.parametrize.is_parametrized(conv, "weight") and conv.bias is not None
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert not any(isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)) for m in d.modules())
    assert {k.rsplit(".", 1)[-1] for k in d.state_dict()} == {"original", "_u", "_v", "bias"}

    def sigmas() -> list[float]:
        return [torch.linalg.matrix_norm(c.weight.reshape(c.weight.shape[0], -1), ord=2).item() for c in convs]

    # eval mode straight after construction: σ is already estimated (the generator loss scores fakes in eval
    # mode; a random-u estimate would blow the effective weights up by orders of magnitude)
    d.eval()
    with torch.no_grad():
        assert all(0.9 <= s <= 1.3 for s in sigmas())
    # after power iterations every effective weight has spectral norm ≈ 1 (the estimate σ = uᵀWv never
    # exceeds the true top singular value, so the normalised norm approaches 1 from above)
    d.train()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for _ in range(30):
            d(x)
        d.eval()
        assert all(1.0 - 1e-4 <= s <= 1.02 for s in sigmas())


def test_patchgan_gradients() -> None:
    d = PatchGANDiscriminator(base_channels=8, num_layers=2)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    d(x).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())


def test_batchnorm_local_is_instance_norm_over_tokens() -> None:
    bn = BatchNormLocal(4)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    x = torch.randn(3, 4, 10)
    ref = F.instance_norm(x, weight=bn.weight, bias=bn.bias, eps=1e-6)
    torch.testing.assert_close(bn(x), ref, atol=1e-5, rtol=1e-5)
    # virtual batch of 3: statistics over samples and tokens jointly
    bn3 = BatchNormLocal(4, virtual_bs=3, affine=False)
    flat = x.transpose(0, 1).reshape(4, -1)
    ref3 = (x - flat.mean(1).view(1, 4, 1)) / torch.sqrt(flat.var(1, unbiased=False).view(1, 4, 1) + 1e-6)
    torch.testing.assert_close(bn3(x), ref3, atol=1e-5, rtol=1e-5)


def tiny_disc(**kwargs) -> DinoDiscriminator:
    return DinoDiscriminator(TINY_RECIPE, kernel_size=3, image_size=32, **kwargs)


def test_dino_discriminator_shapes_and_frozen_backbone() -> None:
    d = tiny_disc()
    x = (torch.rand(2, 3, 24, 24) * 2 - 1).requires_grad_(True)
    logits = d(x)
    n_tokens = (32 // 8) ** 2
    assert logits.shape == (2, 3 * n_tokens)  # last block + 2 key depths
    # only the heads are parameters / state; the backbone is frozen and hidden
    assert all(k.startswith("heads.") for k in d.state_dict())
    assert all(n.startswith("heads.") for n, _ in d.named_parameters())
    assert not any(p.requires_grad for p in d.backbone.parameters())
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator loss needs gradients to the fake
    assert all(p.grad is None for p in d.backbone.parameters())
    # dtype/device moves reach the hidden backbone
    d.double()
    assert d.backbone.pos_embed.dtype == torch.float64
    assert d(x.detach().double()).dtype == torch.float64


def test_dino_discriminator_power_iteration_only_in_train() -> None:
    d = tiny_disc()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    u0 = d.heads[0][0][0].weight_u.clone()
    d.eval()
    with torch.no_grad():
        d(x)
    torch.testing.assert_close(d.heads[0][0][0].weight_u, u0, atol=0, rtol=0)
    d.train()
    with torch.no_grad():
        d(x)
    assert not torch.equal(d.heads[0][0][0].weight_u, u0)
    # train and eval logits agree once u, v are fixed (BatchNormLocal has no running statistics)
    d.eval()
    with torch.no_grad():
        torch.testing.assert_close(d(x), d(x))


def test_dino_backbone_checkpoint_loading(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = DinoViT(image_size=32, **TINY_RECIPE)
    state = src.state_dict()
    path = tmp_path / "dino.pth"
    torch.save(state, path)
    d = tiny_disc(backbone_checkpoint=path)
    loaded = d.backbone.state_dict()
    for key, value in state.items():
        if key.endswith("attn.qkv.bias"):  # key third zeroed as the official loader (softmax-invariant)
            torch.testing.assert_close(loaded[key][16:32], torch.zeros(16))
            torch.testing.assert_close(loaded[key][:16], value[:16])
        else:
            torch.testing.assert_close(loaded[key], value)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for a, b in zip(src(x), d.backbone(x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tiny_disc(backbone_checkpoint=tmp_path / "nope.pth")
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_dino_backbone(DinoViT(image_size=32, **TINY_RECIPE), {k: v for k, v in state.items() if k != "norm.weight"})


def test_rae_discriminator_importer(tmp_path: Path) -> None:
    path = tmp_path / "dino.pth"
    torch.save(DinoViT(image_size=224, **TINY_RECIPE).state_dict(), path)
    heads = DinoDiscriminator(TINY_RECIPE, kernel_size=9).state_dict()
    arch = {"dino_ckpt_path": str(path), "ks": 9, "norm_type": "bn", "using_spec_norm": True, "recipe": "TINY",
            "key_depths": [1, 2]}
    d = import_official("rae.discriminator", heads, {"arch": arch, "recipe": TINY_RECIPE})
    assert isinstance(d, DinoDiscriminator) and len(d.heads) == 3
    with pytest.raises(ValueError, match="unknown DINO recipe"):
        import_official("rae.discriminator", heads, {"arch": arch})
    with pytest.raises(OfficialCheckpointError, match="missing keys"):
        import_official("rae.discriminator", {k: v for k, v in heads.items() if "heads.2" not in k},
                        {"arch": arch, "recipe": TINY_RECIPE})
    with pytest.raises(ValueError, match="norm_type"):
        import_official("rae.discriminator", heads, {"arch": {**arch, "norm_type": "gn"}, "recipe": TINY_RECIPE})


def test_bad_input_errors() -> None:
    with pytest.raises(ValueError, match="unknown DINO recipe"):
        DinoDiscriminator("L_14")
    with pytest.raises(ValueError, match="key_depths"):
        DinoViT(depth=2, key_depths=(5,), embed_dim=16, num_heads=2)
    with pytest.raises(ValueError, match="expected images"):
        tiny_disc()(torch.zeros(1, 1, 32, 32))
