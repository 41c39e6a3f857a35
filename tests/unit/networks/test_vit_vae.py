"""ViT-VAE (SpeedDiff A.1.1): shapes at both resolutions, identity refinement conv, reparameterisation,
presets and the Tab. 7 parameter / GFLOP counts (meta device)."""
from __future__ import annotations

import pytest
import torch

from speedrun_diffusion.lightning_modules.flops import count_macs
from speedrun_diffusion.lightning_modules.networks.dit import count_parameters
from speedrun_diffusion.lightning_modules.networks.vit_vae import VIT_VAE_SIZES, ViTVAE, ViTVAEConfig, vit_vae_preset


def tiny(resolution: int = 256, **kw) -> ViTVAEConfig:
    return vit_vae_preset("B", resolution, **{**dict(hidden_size=32, num_heads=2, encoder_depth=1,
                                                     decoder_depth=1, latent_channels=4, swiglu_multiple_of=8), **kw})


@pytest.mark.parametrize("resolution,patch", [(256, 16), (512, 32)])
def test_shapes_at_both_resolutions(resolution, patch):
    cfg = tiny(resolution)
    assert cfg.patch_size == patch and cfg.latent_shape == (4, 16, 16)
    vae = ViTVAE(cfg)
    x = torch.rand(2, 3, resolution, resolution) * 2 - 1
    post, z, recon = vae(x)
    assert post.mean.shape == post.logvar.shape == z.shape == (2, 4, 16, 16)
    assert recon.shape == x.shape
    assert vae.encode(x, sample=False).shape == (2, 4, 16, 16)


def test_refine_conv_is_identity_at_init():
    dec = ViTVAE(tiny()).decoder
    img = torch.randn(2, 3, 256, 256)
    torch.testing.assert_close(dec.refine(img), img)
    # the whole decoder equals unpatchify(head(...)) at init: the conv adds nothing
    z = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        tokens = dec.head(dec.trunk(dec.embed(z.flatten(2).transpose(1, 2))))
        pre = tokens.reshape(2, 16, 16, 16, 16, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 256, 256)
        torch.testing.assert_close(dec(z), pre)


def test_reparameterisation_uses_given_noise():
    vae = ViTVAE(tiny())
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    post = vae.posterior(x)
    eps = torch.randn(1, 4, 16, 16)
    z = vae.encode(x, noise=eps)
    torch.testing.assert_close(z, post.mean + torch.exp(0.5 * post.logvar) * eps)
    torch.testing.assert_close(vae.encode(x, sample=False), post.mean)
    # mean / log-variance are the first / second half of the encoder head
    moments = vae.encoder(x)
    torch.testing.assert_close(post.mean, moments[:, :4])
    torch.testing.assert_close(post.logvar, moments[:, 4:])


def test_gradients_reach_every_parameter():
    vae = ViTVAE(tiny(encoder_depth=2, decoder_depth=2, image_size=32, patch_size=4))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    post, _, recon = vae(x, generator=torch.Generator().manual_seed(0))
    (recon - x).square().mean().add(post.kl().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.parameters())


def test_errors_name_the_problem():
    vae = ViTVAE(tiny())
    with pytest.raises(ValueError, match="expects images"):
        vae.encode(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="expects latents"):
        vae.decode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown ViT-VAE size"):
        vit_vae_preset("H")
    with pytest.raises(ValueError, match="resolution"):
        vit_vae_preset("B", 384)
    with pytest.raises(ValueError, match="divisible"):
        ViTVAE(tiny(num_heads=5))


# SpeedDiff supp. Tab. 7 (256²): encoder params, decoder params (M), GFLOPs of either.
TABLE7 = {"B": (28.98, 28.95, 7.41), "L": (103.68, 103.65, 26.54), "XL": (218.63, 218.58, 55.97)}


@pytest.mark.parametrize("size", sorted(VIT_VAE_SIZES))
def test_table7_counts_within_one_percent(size):
    enc_params, dec_params, gflops = TABLE7[size]
    with torch.device("meta"):
        vae = ViTVAE(vit_vae_preset(size, 256))
        enc = count_macs(vae.encoder, torch.zeros(1, 3, 256, 256))
        dec = count_macs(vae.decoder, torch.zeros(1, *vae.latent_shape))
    assert count_parameters(vae.encoder) / 1e6 == pytest.approx(enc_params, rel=0.01)
    assert count_parameters(vae.decoder) / 1e6 == pytest.approx(dec_params, rel=0.01)
    assert enc.paper / 1e9 == pytest.approx(gflops, rel=0.01)
    assert dec.paper / 1e9 == pytest.approx(gflops, rel=0.01)
    # the paper leaves out the attention matmuls: counting them overshoots by more than 1 %
    assert enc.total / 1e9 > 1.01 * gflops
    # encoder and decoder differ only by the μ/log σ² head vs latent embedding
    assert count_parameters(vae.encoder) > count_parameters(vae.decoder)


def test_count_macs_by_hand():
    with torch.device("meta"):
        conv = count_macs(torch.nn.Conv2d(3, 8, 2, stride=2), torch.zeros(2, 3, 8, 8))
        lin = count_macs(torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7)), torch.zeros(2, 3, 5))
    assert conv.conv == 2 * 8 * 4 * 4 * 3 * 2 * 2  # output elements × in × k²
    assert (lin.linear, lin.norm) == (2 * 3 * 5 * 7, 2 * 3 * 7 * 5)  # rows × in × out; fvcore 5 per element
    assert lin.paper == lin.total == lin.linear + lin.norm
