"""RAE tokenizer and frozen encoders (RAE Sec. 3, 4.3, App. E.1): affine-free token normalisation, dropped
[CLS]/registers, position resizing, the [-1, 1] contract, frozen encoding, noise augmentation (official
uniform σ and the paper's half-normal σ), latent statistics, timm / local-folder loading and clear errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speedrun_diffusion.lightning_modules.checkpoints.rae_stage1 import build_rae, load_hf_encoder, load_timm_encoder
from speedrun_diffusion.lightning_modules.networks.rae import RAE, noise_augment
from speedrun_diffusion.lightning_modules.networks.rae_decoder import RAEDecoder, RAEDecoderConfig
from speedrun_diffusion.lightning_modules.networks.rae_encoder import (
    RepresentationEncoder,
    representation_encoder_preset,
)

SMALL = dict(hidden_size=16, depth=1, num_heads=2, mlp_dim=32)


def tiny_encoder(family: str, **overrides) -> RepresentationEncoder:
    patch = 14 if family == "dinov2" else 8
    cfg = representation_encoder_preset(family, patch_size=patch, pos_grid=3, **{**SMALL, **overrides})
    return RepresentationEncoder(cfg)


def tiny_rae(family: str = "dinov2", **kwargs) -> RAE:
    enc = tiny_encoder(family)
    size = 4 * enc.cfg.patch_size
    dec = RAEDecoder(RAEDecoderConfig(latent_dim=16, hidden_size=16, depth=1, num_heads=2, mlp_dim=32, patch_size=4,
                                      num_patches=16))
    return RAE(enc, dec, encoder_input_size=size, **kwargs)


@pytest.fixture(autouse=True)
def _one_thread(_deterministic_torch):
    """Tiny tensors: one thread avoids oversubscription stalls on the shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", ["dinov2", "siglip2", "mae"])
def test_tokens_are_patch_tokens_with_affine_free_layernorm(family: str) -> None:
    enc = tiny_encoder(family)
    p = enc.cfg.patch_size
    tokens = enc(torch.randn(2, 3, 4 * p, 5 * p))
    assert tokens.shape == (2, 20, 16)  # [CLS] / registers dropped
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 20), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(2, 20), atol=1e-3, rtol=0)
    assert enc.norm.weight is None and enc.norm.bias is None
    assert enc.cfg.num_prefix_tokens == {"dinov2": 5, "siglip2": 0, "mae": 1}[family]


def test_position_resizing_rules() -> None:
    enc = tiny_encoder("dinov2")
    table = enc.pos_embed[:, 1:].reshape(1, 3, 3, 16).permute(0, 3, 1, 2)
    ref = F.interpolate(table, size=(4, 4), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(enc.patch_positions(4, 4), ref.flatten(2).transpose(1, 2))
    assert torch.equal(enc.patch_positions(3, 3), enc.pos_embed[:, 1:])  # pretrained grid: untouched
    mae = tiny_encoder("mae")
    table = mae.pos_embed[:, 1:].reshape(1, 3, 3, 16).permute(0, 3, 1, 2)
    ref = F.interpolate(table, size=(4, 4), mode="bicubic", align_corners=False)  # ViT-MAE: no antialias
    torch.testing.assert_close(mae.patch_positions(4, 4), ref.flatten(2).transpose(1, 2))
    assert not mae.pos_embed.requires_grad and torch.count_nonzero(mae.pos_embed[0, 0]) == 0  # fixed sin-cos


def test_unit_range_contract_and_frozen_encoder() -> None:
    rae = tiny_rae().eval()
    x = (torch.rand(2, 3, 70, 70) * 2 - 1).requires_grad_(True)
    z = rae.encode(x)
    assert z.shape == (2, *rae.latent_shape) and not z.requires_grad
    torch.testing.assert_close(z, rae.encode_unit_range((x.detach() + 1) / 2))
    assert not any(p.requires_grad for p in rae.encoder.parameters())
    out = rae.decode(z)
    torch.testing.assert_close(out, rae.decode_unit_range(z) * 2 - 1)
    assert out.shape == (2, 3, 16, 16)
    out.mean().backward()
    assert rae.decoder.pred.weight.grad is not None
    # the resize is the official bicubic, skipped at the encoder size
    x01 = torch.rand(1, 3, 70, 70)
    resized = F.interpolate(x01, size=(56, 56), mode="bicubic", align_corners=False)
    ref = (resized - rae.encoder.image_mean) / rae.encoder.image_std
    torch.testing.assert_close(rae.preprocess(x01), ref)


def test_noise_only_in_training_and_replayable() -> None:
    rae = tiny_rae(noise_tau=0.8)
    x = torch.rand(2, 3, 56, 56) * 2 - 1
    rae.eval()
    torch.testing.assert_close(rae.encode(x), rae.encode(x))
    clean = rae.encode(x)
    rae.train()
    assert not torch.allclose(rae.encode(x), clean)
    u, n = torch.rand(2, 1, 1), torch.randn(2, 16, 16)
    noisy = rae.encode(x, noise_u=u, noise_n=n)
    expected = rae.tokens_to_latent(rae.latent_to_tokens(clean) + 0.8 * u * n)
    torch.testing.assert_close(noisy, expected)


def test_sigma_distributions() -> None:
    zeros, ones = torch.zeros(4096, 1, 1), torch.ones(4096, 1, 1)
    g = torch.Generator().manual_seed(0)
    sigma = noise_augment(zeros, 0.8, n=ones, generator=g).flatten()
    assert sigma.min() >= 0 and sigma.max() < 0.8  # official: σ ~ U[0, τ)
    assert abs(sigma.mean().item() - 0.4) < 0.02
    sigma = noise_augment(zeros, 0.8, n=ones, sigma_dist="half_normal", generator=g).flatten()
    assert sigma.min() >= 0 and abs(sigma.mean().item() - 0.8 * (2 / torch.pi) ** 0.5) < 0.03  # paper: |N(0, τ²)|
    u = torch.tensor([-0.5, 0.25]).view(2, 1, 1)
    out = noise_augment(torch.zeros(2, 1, 1), 0.8, u=u, n=torch.ones(2, 1, 1), sigma_dist="half_normal")
    torch.testing.assert_close(out.flatten(), torch.tensor([0.4, 0.2]))
    with pytest.raises(ValueError, match="sigma_dist"):
        noise_augment(zeros, 0.8, sigma_dist="gaussian")


def test_latent_statistics(tmp_path) -> None:
    rae = tiny_rae().eval()
    x = torch.rand(2, 3, 56, 56) * 2 - 1
    raw = rae.encode(x)
    mean, var = torch.randn(rae.latent_shape), torch.rand(rae.latent_shape) + 0.5
    torch.save({"mean": mean, "var": var}, tmp_path / "stats.pt")
    rae.load_latent_stats(tmp_path / "stats.pt")
    z = rae.encode(x)
    torch.testing.assert_close(z, (raw - mean) / torch.sqrt(var + 1e-5))
    torch.testing.assert_close(rae.denormalize_latent(z), raw, atol=1e-5, rtol=1e-5)
    assert "latent_mean" in rae.state_dict()
    with pytest.raises(ValueError, match="latent mean has shape"):
        rae.set_latent_stats(mean[:1], var)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        rae.load_latent_stats(tmp_path / "missing.pt")


def test_clear_errors(tmp_path) -> None:
    enc = tiny_encoder("mae")
    dec = RAEDecoder(RAEDecoderConfig(latent_dim=8, hidden_size=16, depth=1, num_heads=2, mlp_dim=32, num_patches=16))
    with pytest.raises(ValueError, match="latent_dim=8"):
        RAE(enc, dec, encoder_input_size=32)
    dec16 = RAEDecoder(RAEDecoderConfig(latent_dim=16, hidden_size=16, depth=1, num_heads=2, mlp_dim=32,
                                        num_patches=16))
    with pytest.raises(ValueError, match="not a multiple of patch size 8"):
        RAE(enc, dec16, encoder_input_size=30)
    with pytest.raises(ValueError, match="expects images"):
        tiny_rae().encode(torch.rand(1, 1, 56, 56))
    with pytest.raises(ValueError, match="registers"):
        representation_encoder_preset("mae", num_register_tokens=4)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hf_encoder(tmp_path / "nowhere", "dinov2")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_encoder(tmp_path / "cfg", "dinov2")
    with torch.device("meta"), pytest.raises(FileNotFoundError, match="decoder.pt"):
        build_rae(decoder="B", decoder_path=tmp_path / "decoder.pt")


def test_build_rae_official_shapes() -> None:
    with torch.device("meta"):
        rae = build_rae()  # DINOv2-B/14 at 224 + ViT-XL with p_d = 16
    assert rae.latent_shape == (768, 16, 16)
    assert rae.decoder.cfg.image_size == 256
    assert sum(p.numel() for p in rae.decoder.parameters()) == 415_352_704


def test_timm_weights_reproduce_timm_features() -> None:
    timm = pytest.importorskip("timm")
    kw = dict(embed_dim=16, depth=1, num_heads=2, img_size=42, num_classes=0)
    torch.manual_seed(1)
    enc = load_timm_encoder("dinov2", "vit_base_patch14_reg4_dinov2", pretrained=False, **kw)
    torch.manual_seed(1)
    model = timm.create_model("vit_base_patch14_reg4_dinov2", pretrained=False, **kw).eval()
    assert enc.cfg.pos_grid == 3 and enc.cfg.num_register_tokens == 4
    with torch.no_grad():
        model.norm.weight.fill_(1.0)
        model.norm.bias.zero_()
        x = torch.randn(2, 3, 42, 42)
        torch.testing.assert_close(enc(x), model.forward_features(x)[:, 5:])
